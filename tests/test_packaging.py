"""The extras in pyproject.toml: pairs that would install clashing builds are declared as conflicts."""

import itertools
import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")

PYPROJECT = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
EXTRAS: dict[str, list[str]] = PYPROJECT["project"]["optional-dependencies"]
# distributions that must never be installed together: they own the same import package or need different
# majors of one library
CLASHES = [{"onnxruntime", "onnxruntime-gpu"}, {"tensorrt-cu12", "tensorrt-cu13"}]


def _names(extra: str, seen: frozenset[str] = frozenset()) -> set[str]:
    """Distribution names an extra installs, following `bigmodel[other]` self-references."""
    names: set[str] = set()
    for req in EXTRAS[extra]:
        name = re.match(r"[A-Za-z0-9_.-]+", req).group(0).lower()
        if name == "bigmodel":
            for inner in re.search(r"\[(.*)\]", req).group(1).split(","):
                if inner.strip() not in seen:
                    names |= _names(inner.strip(), seen | {extra})
        else:
            names.add(name)
    return names


def _declared() -> list[set[str]]:
    return [{item["extra"] for item in group} for group in PYPROJECT["tool"]["uv"]["conflicts"]]


def test_every_clashing_pair_of_extras_is_a_declared_conflict():
    declared = _declared()
    clashing = []
    for a, b in itertools.combinations(sorted(EXTRAS), 2):
        both = _names(a) | _names(b)
        alone = any(clash <= _names(a) or clash <= _names(b) for clash in CLASHES)
        if not alone and any(clash <= both for clash in CLASHES):
            clashing.append({a, b})
    assert {"cpu", "gpu"} in clashing and {"tensorrt", "tensorrt-cu12"} in clashing  # the walk sees them
    missing = [sorted(pair) for pair in clashing if not any(pair <= group for group in declared)]
    assert not missing, f"extras that install clashing builds but are not in [tool.uv] conflicts: {missing}"


def test_no_single_extra_installs_a_clashing_pair():
    for extra in EXTRAS:
        for clash in CLASHES:
            assert not clash <= _names(extra), f"[{extra}] installs {sorted(clash)} together"
