"""`bigmodel export PYTHAE_MODEL_FOLDER`: a model pythae's `model.save()` wrote, exported as bigmodel roles.

The folder holds model_config.json, model.pt ({"model_state_dict": ...}) and environment.json, plus
encoder.pkl / decoder.pkl / discriminator.pkl for custom nets. Default architectures are rebuilt from
the config and model.pt is read with weights_only=True; the cloudpickle files run code when loaded,
so they are refused unless the caller trusts them (`--trust-pickles`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from bigmodel.errors import CheckpointError, InputError, missing_package

# pythae model class -> bigmodel family preset. Gaussian encoders with a N(0, I) prior -> "vae";
# Adversarial_AE -> "aae" (see _roles); deterministic encoders -> "ae" (mixture prior fitted to codes).
FAMILIES = {"VAE": "vae", "BetaVAE": "vae", "Adversarial_AE": "aae", "AE": "ae"}
NETS = ("encoder", "decoder", "discriminator")


def is_pythae_folder(path: Path) -> bool:
    """Whether `path` looks like a folder pythae's `model.save()` wrote."""
    return path.is_dir() and (path / "model_config.json").is_file()


def read_config(folder: Path) -> dict:
    """model_config.json as a dict; its `name` (e.g. "VAEConfig") names pythae's model class."""
    try:
        config = json.loads((folder / "model_config.json").read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{folder}/model_config.json: not readable JSON ({type(e).__name__}: {e})") from e
    if not isinstance(config, dict) or not isinstance(config.get("name"), str):
        raise CheckpointError(f"{folder}/model_config.json: expected pythae's model config with a 'name'; got "
                              f"{type(config).__name__}")
    return config


def model_class_name(config: dict) -> str:
    """pythae's naming: class X has config "XConfig" or "X_Config"."""
    name = config["name"]
    for tail in ("_Config", "Config"):
        if name.endswith(tail):
            return name[: -len(tail)]
    return name


def pythae_roles(folder: str | Path, trust_pickles: bool = False) -> tuple[str, dict[str, nn.Module], bool]:
    """(bigmodel family, {role: module}, decoder gives Bernoulli logits) for a pythae model folder.

    >>> family, roles, logits = pythae_roles("my_pythae_vae/final_model")
    """
    folder = Path(folder)
    config = read_config(folder)
    cls_name = model_class_name(config)
    family = FAMILIES.get(cls_name)
    if family is None:
        raise InputError(f"{folder}: a pythae {cls_name}; bigmodel imports {', '.join(FAMILIES)} (priors and extra "
                         "networks of the others are not part of bigmodel's presets)")
    model = _load_model(folder, config, cls_name, trust_pickles)
    return family, *_roles(model, family, config)


def _load_model(folder: Path, config: dict, cls_name: str, trust: bool) -> nn.Module:
    """pythae's model rebuilt from its config, custom nets only when trusted, weights read with weights_only."""
    try:
        import pythae.models as pm
        from pythae.models.auto_model import AutoConfig
        from pythae.models.base.base_utils import CPU_Unpickler
    except ImportError as e:
        raise missing_package("pythae", "pythae", "exporting a pythae model folder") from e
    custom = [n for n in NETS if config.get(f"uses_default_{n}") is False]
    if custom and not trust:
        pickles = ", ".join(n + ".pkl" for n in custom)
        raise InputError(f"{folder}: custom {', '.join(custom)} saved as cloudpickle ({pickles}"
                         "), which runs code when loaded; pass --trust-pickles only if you trust who wrote them")
    weights = folder / "model.pt"
    if not weights.is_file():
        raise CheckpointError(f"{folder}: a pythae model folder holds model.pt beside model_config.json; it is missing")
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{weights}: not readable with weights_only=True: {type(e).__name__}: "
                              f"{str(e).strip().splitlines()[0][:160] if str(e).strip() else ''}") from e
    if not isinstance(state, dict) or "model_state_dict" not in state:
        raise CheckpointError(f"{weights}: expected pythae's {{'model_state_dict': ...}}; got "
                              f"{list(state)[:5] if isinstance(state, dict) else type(state).__name__}")
    nets = {}
    for name in custom:
        path = folder / f"{name}.pkl"
        if not path.is_file():
            raise CheckpointError(f"{folder}: model_config.json says the {name} is custom, but {path.name} is missing")
        with path.open("rb") as f:
            nets[name] = CPU_Unpickler(f).load()  # trusted by the caller (--trust-pickles)
    try:
        model = getattr(pm, cls_name)(AutoConfig.from_json_file(str(folder / "model_config.json")), **nets)
        model.load_state_dict(state["model_state_dict"])
    except (RuntimeError, ValueError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{folder}: rebuilding pythae's {cls_name} failed: {type(e).__name__}: "
                              f"{str(e).strip().splitlines()[0][:200]}") from e
    return model.eval()


def _roles(model: nn.Module, family: str, config: dict) -> tuple[dict[str, nn.Module], bool]:
    """pythae's ModelOutput fields as the preset's outputs: embedding -> mu (or z), log_covariance -> logvar,
    reconstruction -> x, the discriminator's probability -> its logit.

    Adversarial_AE goes to the `aae` preset: its roles are an encoder, a decoder and a discriminator
    on codes, its prior is N(0, I); the Gaussian encoder's mean is the code (graphs draw no noise).
    """
    encoder_fields = ("embedding", "log_covariance") if family == "vae" else ("embedding",)
    default_decoder = config.get("uses_default_decoder") is not False
    # the default MLP decoder ends in a Sigmoid: its Linear before it gives the exact logits, which the
    # bundle offers for likelihoods when the model was trained as a Bernoulli (BCE) one
    logits = default_decoder and config.get("reconstruction_loss") == "bce"
    decoder = _DefaultLogits(model.decoder) if logits else _Fields(model.decoder, ("reconstruction",))
    roles = {"encoder": _Fields(model.encoder, encoder_fields), "decoder": decoder}
    if family == "aae":
        roles["discriminator"] = _ProbabilityLogit(model.discriminator)
    return roles, logits


class _Fields(nn.Module):
    """A pythae net returning a ModelOutput, as the tuple of the named fields."""

    def __init__(self, net: nn.Module, fields: tuple[str, ...]):
        super().__init__()
        self.net, self.fields = net, fields

    def forward(self, x):
        out = self.net(x)
        got = tuple(out[f] for f in self.fields)
        return got if len(got) > 1 else got[0]


class _DefaultLogits(nn.Module):
    """pythae's Decoder_AE_MLP without its final Sigmoid: z (N, D) -> logits (N, *input_dim)."""

    def __init__(self, decoder: nn.Module):
        super().__init__()
        self.decoder = decoder

    def forward(self, z):
        h = self.decoder.layers[0](z)
        return self.decoder.layers[1][0](h).reshape((z.shape[0], *self.decoder.input_dim))


class _ProbabilityLogit(nn.Module):
    """pythae's discriminators give a probability (its loss is BCE on it); bigmodel's give the logit."""

    def __init__(self, discriminator: nn.Module):
        super().__init__()
        self.discriminator = discriminator

    def forward(self, z):
        d = self.discriminator
        if type(d).__name__ == "Discriminator_MLP":  # exact: its last Linear, before the Sigmoid
            return d.layers[1][0](d.layers[0](z.reshape(z.shape[0], -1)))
        return torch.logit(d(z)["embedding"], eps=1e-7)


def export_pythae(folder: str | Path, data, out: str | Path, *, value_range: tuple[float, float] = (0.0, 1.0),
                  trust_pickles: bool = False, options=None, progress=None):
    """Export a pythae model folder into a verified bundle at `out`, as `export_modules` does.

    data: example images of the model's input_dim (mnist-5k, a .npy file, an array ...) in value_range.

    >>> export_pythae("my_pythae_vae/final_model", "mnist-5k", "vae_bundle")
    """
    from bigmodel.export.modules import export_modules

    folder = Path(folder)
    config = read_config(folder)
    shape = config.get("input_dim")
    if not (isinstance(shape, list) and len(shape) == 3):
        raise InputError(f"{folder}: model_config.json's input_dim must be an image shape [C, H, W]; got {shape!r}")
    family, roles, logits = pythae_roles(folder, trust_pickles)
    return export_modules(roles, data, out, family=family, value_range=value_range, image_logits=logits,
                          arch=f"pythae-{model_class_name(config)}", options=options, progress=progress)
