"""One training loop for every family, checkpoints, and data-parallel training under torchrun."""
