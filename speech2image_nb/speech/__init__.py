"""Speech-to-text engines behind one interface (see base.py)."""
