"""Flow-matching math shared by training and sampling (t = 0 is noise, t = 1 is data)."""
