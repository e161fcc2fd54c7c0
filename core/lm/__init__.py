"""memloc.core.lm.model."""
