"""zsad.runtime."""
