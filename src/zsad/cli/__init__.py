"""zsad.cli."""
