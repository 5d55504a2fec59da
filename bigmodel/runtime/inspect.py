"""`describe(bundle)`: what `bigmodel info` shows — manifest, file checks, engines' fit here, backends.

Reads and checks; never raises on a damaged file (it reports it), only on an unreadable manifest.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from bigmodel.errors import BigmodelError
from bigmodel.manifest import read_manifest


def _check(bundle: Path, file: str, expected: str) -> str:
    from bigmodel.checksum import sha256_file
    from bigmodel.runtime import member

    try:
        path = member(bundle, file, "file")
    except BigmodelError:
        return "outside the bundle"
    if not path.is_file():
        return "missing"
    return "ok" if sha256_file(path) == expected else "sha256 mismatch"


def describe(bundle: str | os.PathLike) -> dict[str, Any]:
    """The manifest as a dict plus, per role and engine, size and sha256 check; engines' fit; backends here."""
    from bigmodel.runtime import backend_status
    from bigmodel.runtime.model import METHOD_ROLES

    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    d = manifest.to_dict()
    roles = {}
    for name, spec in manifest.roles.items():
        check = _check(bundle, spec.file, spec.sha256)
        f = bundle / spec.file
        size = f.stat().st_size if check == "ok" else 0
        for extra in [*spec.data_files, *([manifest.reference.programs[name]]
                                          if name in manifest.reference.programs else [])]:
            other = _check(bundle, extra.file, extra.sha256)  # its weights and program count as the role's
            if check == "ok" and other != "ok":
                check = f"{other} ({extra.file})"
        roles[name] = {**d["roles"][name], "bytes": size if check == "ok" else 0, "check": check}
    status = backend_status()
    local = None
    if manifest.engines and status["tensorrt"] is None:
        try:
            from bigmodel.runtime.backends.tensorrt import local_tensorrt

            local = local_tensorrt()
        except BigmodelError:
            local = None
    engines = []
    for e, ed in zip(manifest.engines, d["engines"], strict=True):
        here = f"unknown: {status['tensorrt']}" if local is None else "yes"
        if local is not None:
            from bigmodel.runtime.engines import check_engine_compat

            try:
                check_engine_compat(e, local.tensorrt_version, local.compute_capability)
            except BigmodelError as err:
                here = f"no: {err}"
        engines.append({**ed, "check": _check(bundle, e.file, e.sha256), "here": here})
    methods = [m for m, need in METHOD_ROLES.items() if all(r in manifest.roles for r in need)]
    from bigmodel.runtime.backends.ort_options import tf32_policy

    return {"bundle": str(bundle), "manifest": d, "roles": roles, "engines": engines, "methods": methods,
            "backends": status, "tf32": tf32_policy(manifest), "tuning": tuning_summary(bundle, manifest),
            "forms": forms_summary(bundle, manifest)}


def forms_summary(bundle: Path, manifest) -> list[dict[str, Any]]:
    """Each verified precision beyond the default: verdict, worst share of tolerance used, files' check."""
    out = []
    for precision, form in manifest.forms.items():
        checks = [_check(bundle, f.file, f.sha256) for f in form.roles.values()]
        checks += [_check(bundle, d.file, d.sha256) for f in form.roles.values() for d in f.data_files]
        used = [q.get("tolerance_used") for q in form.quality.values() if isinstance(q, dict)]
        out.append({"precision": precision, "passed": form.verification.get("passed"),
                    "tolerance_used": max((u for u in used if u is not None), default=None),
                    "runs_on": form.verification.get("checks", "").rsplit("), ", 1)[-1],
                    "check": next((c for c in checks if c != "ok"), "ok")})
    return out


def tuning_summary(bundle: Path, manifest) -> dict[str, Any] | None:
    """The tuning table beside the manifest and whether it applies here (with the default threads), or None."""
    from bigmodel.runtime import tuning
    from bigmodel.runtime.backends.ort import physical_cores

    try:
        table = tuning.read_table(bundle)
    except BigmodelError as e:
        return {"file": tuning.TABLE, "stale": str(e), "table": None}
    if table is None:
        return None
    return {"file": tuning.TABLE, "stale": tuning.stale_reason(table, manifest, table["machine"].get("threads")
                                                               or physical_cores()), "table": table}
