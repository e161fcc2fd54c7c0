"""memloc.core.classifier."""
