"""zsad.formats."""
