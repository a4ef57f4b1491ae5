"""zsad.bench."""
