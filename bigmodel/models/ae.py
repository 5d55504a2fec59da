"""Autoencoder: `encoder` x -> z, `decoder` z -> x̂; Bernoulli reconstruction loss on logits."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from bigmodel.manifest import LatentSpec
from bigmodel.models import nets
from bigmodel.models.base import (
    IMAGE_IN,
    IMAGE_OUT,
    LATENT_IN,
    BaseConfig,
    Decode,
    GenerativeModel,
    RoleIO,
    StepFn,
    adam,
)
from bigmodel.models.base import bce_logits_sum as recon_loss
from bigmodel.models.registry import register_model

PRIOR_COMPONENTS = 10  # Ghosh et al. (2020) fit a 10-component mixture to an MNIST autoencoder's codes
PRIOR_FIT_MAX = 20_000  # codes used for the fit (EM is O(N * K * latent) per round)


@dataclass
class AEConfig(BaseConfig):
    latent_dim: int = 32


@register_model
class AE(GenerativeModel):
    family = "ae"
    description = "autoencoder: encoder x->z, decoder z->x; BCE reconstruction"
    config_cls = AEConfig
    roles = {"encoder": RoleIO(IMAGE_IN, (("z", "latent"),)), "decoder": RoleIO(LATENT_IN, IMAGE_OUT)}

    def __init__(self, arch, data, config: AEConfig):
        super().__init__(arch, data, config)
        c = config
        self.encoder = nets.encoder(arch, data.shape, c.latent_dim, c.hidden, c.width)
        self.decoder = nets.decoder(arch, c.latent_dim, data.shape, c.hidden, c.width)

    def optimizers(self):
        return {"autoencoder": adam(self.parameters(), self.config.lr)}

    def train_step(self, x: Tensor, noise, step: StepFn):
        loss = recon_loss(self.decoder(self.encoder(x)), x)
        step("autoencoder", loss)
        return {"loss": loss.detach()}

    def eval_losses(self, x: Tensor, noise):
        return {"loss": recon_loss(self.decoder(self.encoder(x)), x)}

    def role_module(self, role: str):
        return {"encoder": self.encoder, "decoder": Decode(self.decoder)}[role]

    @torch.no_grad()
    def export_latent_spec(self, train: np.ndarray) -> LatentSpec:
        """A diagonal Gaussian mixture fitted by EM to the codes of (up to PRIOR_FIT_MAX) training images.

        A plain autoencoder has no prior; decoding N(0, I) gives blobs. Sampling this density of its
        own codes gives digits (Ghosh et al., 2020, "From variational to deterministic autoencoders").
        """
        x = torch.from_numpy(np.ascontiguousarray(train[:PRIOR_FIT_MAX], dtype=np.float32))
        was_training = self.training
        self.eval()
        codes = torch.cat([self.encoder(x[i : i + 1000]) for i in range(0, len(x), 1000)]).numpy()
        self.train(was_training)
        return mixture_prior(codes, f"training images of {self.data.source}")

    def reconstruct(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.decoder(self.encoder(x)))


def mixture_prior(codes: np.ndarray, of: str) -> LatentSpec:
    """The latent entry of a diagonal Gaussian mixture fitted by EM to codes (N, dim) of `of`."""
    from bigmodel.priors import fit_mixture

    fit = fit_mixture(codes, components=PRIOR_COMPONENTS, seed=0)
    source = (f"fitted at export: {PRIOR_COMPONENTS}-component diagonal Gaussian mixture, EM on the codes of "
              f"{len(codes)} {of}")
    params = {"means": fit["means"], "stds": fit["stds"], "weights": fit["weights"], "source": source,
              "log_likelihood": round(fit["log_likelihood"], 4)}
    return LatentSpec(dim=int(codes.shape[1]), prior="mixture", params=params)
