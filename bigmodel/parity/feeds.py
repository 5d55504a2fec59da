"""What a role is fed: one dict {input name: array} per call, and how a chain's next role gets its feeds."""

from __future__ import annotations

import numpy as np

from bigmodel.manifest import RoleSpec

Feeds = dict[str, np.ndarray]  # input name -> array, every input of a role in the manifest's order


def chain_feeds(spec: RoleSpec, value, feeds: Feeds) -> dict:
    """The feeds of a chain's next role: the previous role's first output into its first input, its other
    inputs (a conditional discriminator's labels) by name from the chain's first role's feeds."""
    return {spec.inputs[0].name: value, **{t.name: feeds[t.name] for t in spec.inputs[1:]}}
