"""`python -m memloc.cli` runs the `memloc` command."""

from memloc.cli.app import main

main()
