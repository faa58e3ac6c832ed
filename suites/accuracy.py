"""Placeholder for the accuracy suite."""
