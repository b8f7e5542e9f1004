"""Tests that drive JupyterLab 4 / Notebook 7 in a real Chromium (see harness.py)."""
