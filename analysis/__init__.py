"""pagesim analysis: simulation records -> pandas DataFrames, reports, plots, sweeps and the `pagesim` CLI."""
