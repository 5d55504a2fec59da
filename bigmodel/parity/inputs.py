"""What parity feeds each role and chain: real, generated and noise images, prior samples, ±4σ latents.

The probe sets come from `bigmodel.models.probes` (export's built-in check draws from there too),
plus, for image inputs, the images the bundle's decoder/generator makes from prior samples (as
`Model.sample` does; drawn by the reference), seeded, float32, at batch 1 and at an odd batch N.
`save_inputs` writes them in the JSON form `polygraphy run --load-inputs` reads, so a peer tool
runs on exactly the same inputs.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bigmodel.errors import CheckpointError, DataError
from bigmodel.manifest import Manifest, read_manifest
from bigmodel.parity.reference import TorchReference, find_checkpoint
from bigmodel.parity.report import ProbeInput

# Chains composed from roles: the first role's first output feeds the second role's input.
CHAINS = (("encoder", "decoder"), ("generator", "discriminator"), ("encoder", "discriminator"))
DEFAULT_SAMPLES = 31  # inputs per probe set: runs at batch 1 and batch 31


def validation_images(manifest: Manifest, data) -> tuple[np.ndarray, str]:
    from bigmodel.data import load_data

    source = str(data) if data is not None else manifest.data.source
    d = manifest.data
    try:
        val = load_data(source, seed=d.seed, val_fraction=d.val_fraction).val
    except DataError as e:
        hint = "" if data is not None else f"; pass --data PATH with {d.shape} images instead"
        raise DataError(f"cannot read validation images of {source!r}: {e}{hint}") from e
    if tuple(val.shape[1:]) != tuple(d.shape):
        raise DataError(f"validation images of {source!r} have shape {tuple(val.shape[1:])}; "
                        f"the bundle takes {tuple(d.shape)}")
    if len(val) == 0:
        raise DataError(f"{source!r} has no validation images (val_fraction {d.val_fraction})")
    return val, source


def targets_of(manifest: Manifest) -> list[tuple[str, ...]]:
    """Each role alone, then each chain whose links exist and whose kinds fit."""
    roles = manifest.roles
    targets = [(r,) for r in roles]
    for a, b in CHAINS:
        if a in roles and b in roles and roles[a].outputs[0].kind == roles[b].inputs[0].kind:
            targets.append((a, b))
    return targets


def target_name(target: tuple[str, ...]) -> str:
    return "->".join(target)


_SOURCES = {
    "val": "validation images of {data}, a seeded pick",
    "noise": "uniform noise images in [0, 1)",
    "generated": "images the reference's {maker} makes from the bundle's prior samples",
    "prior": "standard normal codes",
    "extreme": "codes out to ±4σ (half: normal x4 clipped to ±4; half: exactly ±4)",
    "mixture": "codes from the bundle's mixture prior",
}


IMAGE_MAKERS = ("generator", "decoder")  # the role whose outputs are the bundle's generated images

Generate = Callable[[str, np.ndarray], np.ndarray]  # (role, latents) -> the role's first output


def probe_inputs(manifest, targets, val, data_name, samples, seed, generate: Generate | None = None):
    """Input sets per target, from `bigmodel.models.probes` (as export's check), float32.

    generate: the reference's image maker; when given, image inputs also get "generated" images
    (its outputs on the bundle's prior samples, what a discriminator or encoder meets in use).
    """
    from bigmodel import priors
    from bigmodel.models.probes import role_probes

    inputs, feeds = [], {}
    maker = next((r for r in IMAGE_MAKERS if r in manifest.roles), None)
    made = None
    for target in targets:
        spec = manifest.roles[target[0]].inputs[0]
        sets = role_probes(spec.kind, manifest.latent.dim, val, samples, seed)
        if spec.kind == "latent" and manifest.latent.prior != "normal":
            sets["mixture"] = priors.draw(manifest.latent, samples, seed)
        if spec.kind == "image" and generate is not None and maker is not None:
            if made is None:
                made = generate(maker, priors.draw(manifest.latent, samples, seed))
            sets["generated"] = made
        name = target_name(target)
        for probe, x in sets.items():
            x = np.ascontiguousarray(x, dtype=np.float32)
            n = len(x) if len(x) % 2 else len(x) - 1
            batches = [1] + ([n] if n > 1 else [])
            feeds[name, probe] = [x[:b] for b in batches]
            inputs.append(ProbeInput(name, probe, _SOURCES[probe].format(data=data_name, maker=maker), seed,
                                     tuple(x.shape),
                                     hashlib.sha256(x.tobytes()).hexdigest()))
    return inputs, feeds


def save_polygraphy_inputs(path: str | Path, feeds: list[dict[str, np.ndarray]]) -> Path:
    """Write feed dicts in the JSON form `polygraphy run --load-inputs` reads (no polygraphy needed).

    Polygraphy encodes an ndarray as {"array": base64(np.save bytes), "polygraphy_class": "ndarray"}
    (polygraphy/json/serde.py); one list element per inference iteration.
    """
    import base64
    import io
    import json

    from bigmodel.fileio import atomic_write_text

    def enc(a: np.ndarray) -> dict[str, str]:
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
        return {"array": base64.b64encode(buf.getvalue()).decode(), "polygraphy_class": "ndarray"}

    return atomic_write_text(path, json.dumps([{k: enc(v) for k, v in f.items()} for f in feeds]))


def save_inputs(bundle: str | Path, folder: str | Path, samples: int = DEFAULT_SAMPLES, seed: int = 0,
                data: str | Path | None = None) -> list[Path]:
    """Write `folder/ROLE.json` per role: the feeds `run_parity` gives it, for `polygraphy run --load-inputs`.

    Each file lists every probe set at batch 1 then batch N, in the graph's input dtype.
    """
    manifest = read_manifest(Path(bundle))
    val, name = validation_images(manifest, data)
    generate = None
    with contextlib.suppress(CheckpointError):  # no checkpoint beside the bundle: no generated images
        generate = TorchReference(find_checkpoint(Path(bundle), manifest, None)[0]).generate
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for role, spec in manifest.roles.items():
        _, feeds = probe_inputs(manifest, [(role,)], val, name, samples, seed, generate)
        t = spec.inputs[0]
        rows = [{t.name: x.astype(t.dtype)} for batches in feeds.values() for x in batches]
        written.append(save_polygraphy_inputs(folder / f"{role}.json", rows))
    return written
