"""Building blocks shared by the families: MLP and DCGAN-style conv encoders/decoders."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from bigmodel.errors import ConfigError


def mlp(sizes: list[int], act: type[nn.Module] = nn.ReLU, batchnorm: bool = False) -> nn.Sequential:
    """Linear layers of `sizes` with `act` (after BatchNorm1d if asked) between them, none after the last."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.extend([nn.BatchNorm1d(b), act()] if batchnorm else [act()])
    return nn.Sequential(*layers)


def _leaky() -> nn.Module:
    return nn.LeakyReLU(0.2)


@dataclass(frozen=True)
class Arch:
    """A network shape (`--arch`): how it builds an image encoder and an image decoder."""

    name: str
    encoder: Callable[..., nn.Module]  # (shape, out, hidden, width, leaky): (B, C, H, W) -> (B, out)
    decoder: Callable[..., nn.Module]  # (latent, shape, hidden, width, batchnorm): (B, latent) -> (B, C, H, W) logits


_ARCHS: dict[str, Arch] = {}


def register_arch(arch: Arch) -> Arch:
    """Make `arch` available to every family as `--arch NAME`."""
    _ARCHS[arch.name] = arch
    return arch


def archs() -> tuple[str, ...]:
    return tuple(_ARCHS)


def get_arch(name: str) -> Arch:
    if name not in _ARCHS:
        raise ConfigError(f"unknown arch {name!r}; expected one of: {', '.join(_ARCHS)}")
    return _ARCHS[name]


def encoder(arch: str, shape: tuple[int, int, int], out: int, hidden: tuple[int, ...], width: int,
            leaky: bool = False) -> nn.Module:
    """Images (B, C, H, W) -> (B, out), built by the registered arch."""
    return get_arch(arch).encoder(shape, out, hidden, width, leaky)


def decoder(arch: str, latent: int, shape: tuple[int, int, int], hidden: tuple[int, ...], width: int,
            batchnorm: bool = False) -> nn.Module:
    """Codes (B, latent) -> image logits (B, C, H, W); `batchnorm` = BatchNorm1d + LeakyReLU in an MLP."""
    return get_arch(arch).decoder(latent, shape, hidden, width, batchnorm)


def mlp_encoder(shape: tuple[int, int, int], out: int, hidden: tuple[int, ...], width: int,
                leaky: bool = False) -> nn.Module:
    c, h, w = shape
    act = _leaky if leaky else nn.ReLU
    return nn.Sequential(nn.Flatten(), mlp([c * h * w, *hidden, out], act))


def mlp_decoder(latent: int, shape: tuple[int, int, int], hidden: tuple[int, ...], width: int,
                batchnorm: bool = False) -> nn.Module:
    c, h, w = shape
    act = _leaky if batchnorm else nn.ReLU
    return nn.Sequential(mlp([latent, *reversed(hidden), c * h * w], act, batchnorm), nn.Unflatten(1, shape))


def conv_encoder(shape: tuple[int, int, int], out: int, hidden: tuple[int, ...], width: int,
                 leaky: bool = False) -> nn.Module:
    """DCGAN-style: two stride-2 convolutions, then a linear layer (always LeakyReLU)."""
    c, h, w = shape
    _check_conv_shape(shape)
    return nn.Sequential(
        nn.Conv2d(c, width, 4, 2, 1), _leaky(),  # (B, width, H/2, W/2)
        nn.Conv2d(width, 2 * width, 4, 2, 1), _leaky(),  # (B, 2w, H/4, W/4)
        nn.Flatten(),
        nn.Linear(2 * width * (h // 4) * (w // 4), out),
    )


def conv_decoder(latent: int, shape: tuple[int, int, int], hidden: tuple[int, ...], width: int,
                 batchnorm: bool = False) -> nn.Module:
    """DCGAN-style: a linear layer, then two stride-2 transposed convolutions (always BatchNorm2d)."""
    c, h, w = shape
    _check_conv_shape(shape)
    return nn.Sequential(
        nn.Linear(latent, 2 * width * (h // 4) * (w // 4)), nn.ReLU(),
        nn.Unflatten(1, (2 * width, h // 4, w // 4)),
        nn.ConvTranspose2d(2 * width, width, 4, 2, 1), nn.BatchNorm2d(width), nn.ReLU(),  # (B, w, H/2, W/2)
        nn.ConvTranspose2d(width, c, 4, 2, 1),  # (B, C, H, W)
    )


register_arch(Arch("mlp", mlp_encoder, mlp_decoder))
register_arch(Arch("conv", conv_encoder, conv_decoder))


def _check_conv_shape(shape: tuple[int, int, int]) -> None:
    _, h, w = shape
    if h % 4 or w % 4:
        raise ConfigError(f"arch conv needs image height and width divisible by 4; got {h}x{w} (use --arch mlp)")

