"""The model lifecycle: what versions exist, their loading and unloading, their states, and config reloads."""
