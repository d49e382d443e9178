"""The command-line tools: bench, report, plots, compare, demo; the library never imports them."""
