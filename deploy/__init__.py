"""Deployment helpers for modelyard: local stacks of real backends for tests, demos and benchmarks."""
