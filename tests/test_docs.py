"""The docs: `mkdocs build --strict` passes on docs/, and fails on a link to a missing page or anchor."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build(config: Path, site: Path) -> subprocess.CompletedProcess:
    """`mkdocs build --strict` with `config`, into `site`; its output kept for the assertion message."""
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
                          capture_output=True, text=True, timeout=120)


def test_docs_build_in_strict_mode(tmp_path):
    done = build(ROOT / "mkdocs.yml", tmp_path / "site")
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "site" / "cli" / "index.html").is_file()


def test_a_broken_link_or_anchor_fails_the_build(tmp_path):
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    index = tmp_path / "docs" / "index.md"
    original = index.read_text()
    for link in ("[gone](no-such-page.md)", "[gone](cli.md#no-such-heading)"):
        index.write_text(original + f"\n{link}\n")
        done = build(tmp_path / "mkdocs.yml", tmp_path / "site")
        assert done.returncode != 0, link
        assert link.split("(")[1].rstrip(")").split("#")[-1] in done.stdout + done.stderr, done.stderr
