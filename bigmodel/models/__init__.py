"""Model families (AE, VAE, GAN, AAE) behind a registry; one file per family.

Importing the package registers every family (their @register_model decorators run here), so
`bigmodel.models.registry` is complete whichever of its names a caller imports first.
"""

from bigmodel.models import aae, ae, gan, vae  # noqa: F401  (registers the families)
from bigmodel.models.registry import create_model, families, list_models, register_model

__all__ = ["create_model", "families", "list_models", "register_model"]
