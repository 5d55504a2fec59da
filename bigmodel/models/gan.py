"""GAN: `generator` z -> x, `discriminator` x -> logit.

D: BCE(D(x), 1) + BCE(D(G(z).detach()), 0); G: the non-saturating BCE(D(G(z)), 1); logits throughout.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from bigmodel.errors import ConfigError
from bigmodel.models import nets
from bigmodel.models.base import (
    GAN_BETAS,
    IMAGE_IN,
    IMAGE_OUT,
    LATENT_IN,
    BaseConfig,
    Decode,
    GenerativeModel,
    RoleIO,
    StepFn,
    adam,
    bce_const,
)
from bigmodel.models.registry import register_model


@dataclass
class GANConfig(BaseConfig):
    latent_dim: int = 100
    lr: float = 2e-4  # the generator's; the discriminator's is lr * d_lr_scale (two time-scale rule)
    d_lr_scale: float = 1.0
    ema: float = 0.0  # decay of an exponential moving average of the generator's weights; 0: off
    # Spectral normalisation of the discriminator's layers (Miyato et al., 2018). On mnist-5k (defaults,
    # benchmarks/quality_vs_peers.py) it took the mlp GAN's FID from 284/234/270 to 83/78/88 (seeds 0/1/2)
    # and the conv GAN's from 107 to 84 (seed 0; recall 0.48 -> 0.63). None, in runs saved before this
    # was on for conv: on for mlp, off for conv, so those checkpoints rebuild as they were trained.
    spectral_norm: bool | None = True

    def validate(self) -> None:
        super().validate()
        if not 0.0 <= self.ema < 1.0:
            raise ConfigError(f"ema must be in [0, 1); got {self.ema!r}")
        if not self.d_lr_scale > 0:
            raise ConfigError(f"d_lr_scale must be > 0; got {self.d_lr_scale!r}")


@register_model
class GAN(GenerativeModel):
    family = "gan"
    description = "GAN: generator z->x, discriminator x->logit; non-saturating loss"
    config_cls = GANConfig
    roles = {
        "generator": RoleIO(LATENT_IN, IMAGE_OUT),
        "discriminator": RoleIO(IMAGE_IN, (("logit", "logit"),)),
    }
    image_role = "generator"
    train_defaults = {"epochs": 30, "batch_size": 64}  # GANs want more, smaller steps than the autoencoders

    def __init__(self, arch, data, config: GANConfig):
        super().__init__(arch, data, config)
        c = config
        # BatchNorm in the generator's hidden layers keeps an MLP GAN from collapsing to one mode on
        # mnist-5k (without it, 20 epochs gave 64 copies of one blob).
        self.generator = nets.decoder(arch, c.latent_dim, data.shape, c.hidden, c.width, batchnorm=True)
        self.discriminator = nets.encoder(arch, data.shape, 1, c.hidden, c.width, leaky=True)
        if c.spectral_norm or (c.spectral_norm is None and arch == "mlp"):
            for m in self.discriminator.modules():
                if isinstance(m, (nn.Linear, nn.Conv2d)):
                    nn.utils.parametrizations.spectral_norm(m)
        # The exported generator is the moving average of the trained one's weights (when ema > 0): the
        # average of the last few hundred steps, not the last step's point on the adversarial orbit.
        self.generator_ema = copy.deepcopy(self.generator).requires_grad_(False) if c.ema > 0 else None

    def optimizers(self):
        lr = self.config.lr
        return {"discriminator": adam(self.discriminator.parameters(), lr * self.config.d_lr_scale, GAN_BETAS),
                "generator": adam(self.generator.parameters(), lr, GAN_BETAS)}

    @torch.no_grad()
    def _update_ema(self) -> None:
        decay = self.config.ema
        for avg, live in zip(self.generator_ema.parameters(), self.generator.parameters(), strict=True):
            avg.lerp_(live, 1.0 - decay)
        for avg, live in zip(self.generator_ema.buffers(), self.generator.buffers(), strict=True):
            # BatchNorm running statistics are averaged like the weights they normalise (counters copied)
            avg.lerp_(live, 1.0 - decay) if avg.is_floating_point() else avg.copy_(live)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """A checkpoint from before the generator's average existed: start the average at its generator."""
        if self.generator_ema is not None and not any(k.startswith("generator_ema.") for k in state_dict):
            state_dict = {**state_dict, **{"generator_ema." + k[len("generator."):]: v for k, v in state_dict.items()
                                           if k.startswith("generator.")}}
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def _fake(self, n: int, noise: torch.Generator, device) -> Tensor:
        return torch.sigmoid(self.generator(self.prior(n, noise).to(device)))  # (B, C, H, W) in [0, 1]

    def train_step(self, x: Tensor, noise, step: StepFn):
        fake = self._fake(len(x), noise, x.device)
        d_loss = bce_const(self.discriminator(x), 1.0) + bce_const(self.discriminator(fake.detach()), 0.0)
        step("discriminator", d_loss)
        g_loss = bce_const(self.discriminator(fake), 1.0)
        step("generator", g_loss)
        if self.generator_ema is not None:
            self._update_ema()
        return {"d_loss": d_loss.detach(), "g_loss": g_loss.detach()}

    def eval_losses(self, x: Tensor, noise):
        fake = self._fake(len(x), noise, x.device)
        real_logit, fake_logit = self.discriminator(x), self.discriminator(fake)
        return {
            "d_loss": bce_const(real_logit, 1.0) + bce_const(fake_logit, 0.0),
            "g_loss": bce_const(fake_logit, 1.0),
            "d_acc": 0.5 * ((real_logit > 0).float().mean() + (fake_logit < 0).float().mean()),
        }

    def role_module(self, role: str):
        generator = self.generator if self.generator_ema is None else self.generator_ema
        return {"generator": Decode(generator), "discriminator": self.discriminator}[role]
