"""Placeholder for the training suite."""
