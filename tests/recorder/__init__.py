"""Kernel-side tests of the recorders."""
