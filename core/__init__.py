"""memloc.core."""
