"""A trace-driven simulator of modelyard's placement: the real eviction policies and backend chooser, a fake clock."""
