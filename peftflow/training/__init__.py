"""The train step: `run` (one process), `distributed` (torchrun), and what they are built from:
`trainer` (the HF Trainer subclass and callbacks), `arguments` (precision, checkpointing),
`resume` (checkpoints), `memory`."""
