"""Placeholder for the inference suite."""
