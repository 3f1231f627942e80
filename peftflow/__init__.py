"""peftflow core: prepare data, train PEFT adapters, merge, evaluate, publish. No Prefect here."""

__version__ = "0.1.0"
