"""zsad.export."""
