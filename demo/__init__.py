"""Helpers for demo.py (the embedded shapes-world demo): report writer and step utilities."""
