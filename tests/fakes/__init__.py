"""Local stand-ins for outside services, speaking their real protocols (see each module)."""
