"""memloc.edit."""
