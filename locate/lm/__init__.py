"""memloc.locate.lm."""
