"""memloc.locate."""
