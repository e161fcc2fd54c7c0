"""memloc.core.training."""
