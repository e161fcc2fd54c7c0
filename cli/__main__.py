"""`python -m memloc.cli` runs the `memloc` command."""

from .app import main

main()
