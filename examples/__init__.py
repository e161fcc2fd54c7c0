"""Examples of using memloc with models and runs made outside it."""
