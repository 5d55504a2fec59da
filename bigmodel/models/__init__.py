"""Model families (AE, VAE, GAN, AAE) behind a registry; one file per family."""

from bigmodel.models.registry import create_model, families, list_models, register_model

__all__ = ["create_model", "families", "list_models", "register_model"]
