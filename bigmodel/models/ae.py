"""Autoencoder: `encoder` x -> z, `decoder` z -> x̂; Bernoulli reconstruction loss on logits."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from bigmodel.models import nets
from bigmodel.models.base import IMAGE_IN, LATENT_IN, BaseConfig, Decode, GenerativeModel, RoleIO, StepFn
from bigmodel.models.base import bce_logits_sum as recon_loss
from bigmodel.models.registry import register_model


@dataclass
class AEConfig(BaseConfig):
    latent_dim: int = 32


@register_model
class AE(GenerativeModel):
    family = "ae"
    description = "autoencoder: encoder x->z, decoder z->x; BCE reconstruction"
    config_cls = AEConfig
    roles = {"encoder": RoleIO(IMAGE_IN, (("z", "latent"),)), "decoder": RoleIO(LATENT_IN, (("x", "image"),))}

    def __init__(self, arch, data, config: AEConfig):
        super().__init__(arch, data, config)
        c = config
        self.encoder = nets.encoder(arch, data.shape, c.latent_dim, c.hidden, c.width)
        self.decoder = nets.decoder(arch, c.latent_dim, data.shape, c.hidden, c.width)

    def optimizers(self):
        return {"autoencoder": torch.optim.Adam(self.parameters(), lr=self.config.lr)}

    def train_step(self, x: Tensor, noise, step: StepFn):
        loss = recon_loss(self.decoder(self.encoder(x)), x)
        step("autoencoder", loss)
        return {"loss": loss.detach()}

    def eval_losses(self, x: Tensor, noise):
        return {"loss": recon_loss(self.decoder(self.encoder(x)), x)}

    def role_module(self, role: str):
        return {"encoder": self.encoder, "decoder": Decode(self.decoder)}[role]

    def reconstruct(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.decoder(self.encoder(x)))
