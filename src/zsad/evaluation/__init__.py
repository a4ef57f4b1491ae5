"""zsad.evaluation."""
