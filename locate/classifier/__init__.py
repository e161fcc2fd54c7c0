"""memloc.locate.classifier."""
