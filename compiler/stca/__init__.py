"""This package's model: STCA as a PyTorch module, its synthetic data, checkpoints, training, and its cost model."""
