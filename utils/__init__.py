"""Small helpers shared by every entry point (config loading, seeding, I/O)."""
