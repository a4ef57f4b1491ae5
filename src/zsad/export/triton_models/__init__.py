"""Python-backend models a zsad Triton repository ships; Triton's stub runs them, not zsad."""
