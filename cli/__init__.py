"""memloc.cli."""
