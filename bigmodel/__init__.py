"""bigmodel: generative models from PyTorch training to fast, verified inference."""

__version__ = "0.1.0"
