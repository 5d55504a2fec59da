"""What parity feeds each role and chain: real, generated and noise images, prior samples, ±4σ latents.

The probe sets come from `bigmodel.models.probes.input_probes` (export's built-in check draws from
there too), plus, for image inputs, the images the bundle's decoder/generator makes from prior
samples (as `Model.sample` does; drawn by the reference), seeded, at batch 1 and at an odd batch N.
A feed is one dict {input name: array} per batch, every input of the role in the manifest's order
(float32 images and codes, int64 class labels). `save_inputs` writes them in the JSON form
`polygraphy run --load-inputs` reads, so a peer tool runs on exactly the same inputs.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bigmodel.errors import CheckpointError, DataError
from bigmodel.manifest import Manifest, read_manifest
from bigmodel.parity.feeds import Feeds
from bigmodel.parity.reference import TorchReference
from bigmodel.parity.report import ProbeInput

# Chains composed from roles: the first role's first output feeds the second role's first input; the
# second role's other inputs (a conditional discriminator's labels) are the first role's inputs of that name.
CHAINS = (("encoder", "decoder"), ("generator", "discriminator"), ("encoder", "discriminator"))
DEFAULT_SAMPLES = 31  # inputs per probe set: runs at batch 1 and batch 31


def validation_images(manifest: Manifest, data, bundle: Path | None = None) -> tuple[np.ndarray, str]:
    """The images parity probes with: `data` if given, the examples the bundle carries, or its data source's
    validation split -- in the bundle's data range."""
    from bigmodel.data import load_data
    from bigmodel.models.probes import rescale

    examples = manifest.reference.examples
    if data is None and examples is not None and bundle is not None:
        from bigmodel.fileio import sha256_file

        path = Path(bundle) / examples.file
        if not path.is_file() or sha256_file(path) != examples.sha256:
            raise DataError(f"{path}: the bundle's example images are missing or altered (sha256 differs from the "
                            "manifest); pass --data PATH or re-export")
        return np.load(path, allow_pickle=False), f"the {examples.file} the bundle carries"
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
    return rescale(val, (0.0, 1.0), d.value_range), source


def targets_of(manifest: Manifest) -> list[tuple[str, ...]]:
    """Each role alone, then each chain whose links exist, whose kinds fit and whose second role's other
    inputs the first role takes too (by name)."""
    roles = manifest.roles
    targets = [(r,) for r in roles]
    for a, b in CHAINS:
        if a in roles and b in roles and roles[a].outputs[0].kind == roles[b].inputs[0].kind:
            if {t.name for t in roles[b].inputs[1:]} <= {t.name for t in roles[a].inputs}:
                targets.append((a, b))
    return targets


def target_name(target: tuple[str, ...]) -> str:
    return "->".join(target)


_SOURCES = {
    "val": "validation images of {data}, a seeded pick",
    "noise": "uniform noise images in {range}",
    "generated": "images the reference's {maker} makes from the bundle's prior samples",
    "prior": "standard normal codes",
    "extreme": "codes out to ±4σ (half: normal x4 clipped to ±4; half: exactly ±4)",
    "mixture": "codes from the bundle's mixture prior",
    "normal": "standard normal inputs",
}
_OTHER_SOURCES = {"label": "seeded uniform class ids", "image": "images", "latent": "codes"}  # the other inputs


IMAGE_MAKERS = ("generator", "decoder")  # the role whose outputs are the bundle's generated images

Generate = Callable[[str, Feeds], np.ndarray]  # (role, feeds) -> the role's first output


def probe_inputs(manifest, targets, val, data_name, samples, seed,
                 generate: Generate | None = None) -> tuple[list[ProbeInput], dict[tuple[str, str], list[Feeds]]]:
    """Input sets per target, from `bigmodel.models.probes.input_probes` (as export's check).

    Returns (what each set is, feeds): feeds[(target name, probe set)] = [the feeds at batch 1, at an
    odd batch N]. generate: the reference's image maker; when given, image inputs also get "generated"
    images (its outputs on the bundle's prior samples, what a discriminator or encoder meets in use;
    a conditional maker's labels go to the target's input of the same name).
    """
    from bigmodel.models.probes import input_probes, main_input

    inputs, feeds = [], {}
    maker = next((r for r in IMAGE_MAKERS if r in manifest.roles), None)
    made = None
    for target in targets:
        spec = manifest.roles[target[0]]
        main = main_input(spec.inputs)
        sets = input_probes(spec.inputs, manifest.latent, manifest.data.value_range, val, samples, seed)
        base = sets[next(iter(sets))]  # the in-distribution set: the other inputs of the sets added here
        tail = tuple(base[main.name].shape[1:])
        if main.kind == "latent" and manifest.latent.prior != "normal":
            sets["mixture"] = _cut({**base, main.name: _prior(manifest, samples, seed).reshape(samples, *tail)})
        if main.kind == "image" and generate is not None and maker is not None:
            if made is None:
                made = _generated(manifest, maker, samples, seed, val, generate)
            maker_feeds, images = made
            sets["generated"] = _cut({**base, **{k: v for k, v in maker_feeds.items() if k in base},
                                      main.name: images})
        name = target_name(target)
        lo, hi = main.range or manifest.data.value_range
        for probe, fs in sets.items():
            fs = {k: np.ascontiguousarray(v, dtype=np.float32 if v.dtype.kind == "f" else v.dtype)
                  for k, v in fs.items()}
            rows = len(fs[main.name])
            n = rows if rows % 2 else rows - 1
            batches = [1] + ([n] if n > 1 else [])
            feeds[name, probe] = [{k: v[:b] for k, v in fs.items()} for b in batches]
            source = _SOURCES[probe].format(data=data_name, maker=maker, range=f"[{lo:g}, {hi:g}]")
            others = [f"{t.name}: {_OTHER_SOURCES.get(t.kind, 'standard normal')}" for t in spec.inputs
                      if t.name != main.name]
            digest = hashlib.sha256()
            for v in fs.values():
                digest.update(v.tobytes())
            inputs.append(ProbeInput(name, probe, source + (f" ({'; '.join(others)})" if others else ""), seed,
                                     tuple(fs[main.name].shape), digest.hexdigest()))
    return inputs, feeds


def _prior(manifest: Manifest, n: int, seed: int) -> np.ndarray:
    from bigmodel import priors

    return priors.draw(manifest.latent, n, seed)


def _generated(manifest: Manifest, maker: str, n: int, seed: int, val, generate: Generate) -> tuple[Feeds, np.ndarray]:
    """(the maker's feeds: prior codes and, for a conditional one, seeded labels; the images it made of them)."""
    from bigmodel.models.probes import input_probes, main_input

    spec = manifest.roles[maker]
    sets = input_probes(spec.inputs, manifest.latent, manifest.data.value_range, val, n, seed)
    maker_feeds = dict(sets[next(iter(sets))])
    maker_feeds[main_input(spec.inputs).name] = _prior(manifest, n, seed)
    return maker_feeds, generate(maker, maker_feeds)


def _cut(feeds: Feeds) -> Feeds:
    """Every array cut to the shortest one's rows (a set of fewer validation images than samples)."""
    rows = min(len(v) for v in feeds.values())
    return {k: v[:rows] for k, v in feeds.items()}


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

    Each file lists every probe set at batch 1 then batch N, every input of the role in its graph dtype.
    """
    manifest = read_manifest(Path(bundle))
    val, name = validation_images(manifest, data, Path(bundle))
    generate = None
    with contextlib.suppress(CheckpointError):  # no checkpoint beside the bundle: no generated images
        generate = TorchReference.of(Path(bundle), manifest).generate
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for role, spec in manifest.roles.items():
        _, feeds = probe_inputs(manifest, [(role,)], val, name, samples, seed, generate)
        rows = [{t.name: f[t.name].astype(t.dtype) for t in spec.inputs} for batches in feeds.values() for f in batches]
        written.append(save_polygraphy_inputs(folder / f"{role}.json", rows))
    return written
