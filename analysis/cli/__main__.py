"""`python -m analysis.cli` runs the pagesim command line (same as the `pagesim` console script)."""

from analysis.cli import main

main()
