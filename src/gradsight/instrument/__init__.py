"""Instrumentation: hooks and the gradient monitor."""
