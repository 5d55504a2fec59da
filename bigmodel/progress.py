"""The one progress event every long-running library call reports: `Progress`, to an optional `ProgressFn`.

`stage` names who reports: the step itself ("train", "export", "parity", "bench", "eval", "tune"),
or "STEP:PHASE" for an event of one phase of that step ("train:epoch" after each epoch's validation;
"quickstart:train", "quickstart:export"... as the quickstart starts each of its steps). A step run
inside another (quickstart's training, export and parity) reports under its own name, through the
same callback. `done`/`total` count the work when it is countable (batches, checks, cells, steps);
`metrics` holds plain floats only. The library never prints: the CLI renders these (bigmodel/console.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Progress:
    """One progress report: who (`stage`), what (`message`), how far (`done` of `total`), figures (`metrics`)."""

    stage: str
    message: str = ""
    done: int | None = None
    total: int | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)


ProgressFn = Callable[[Progress], None]


def reporter(progress: ProgressFn | None, stage: str) -> Callable[[str], None]:
    """`say(message)` for a step that reports plain messages: each becomes Progress(stage, message), or nothing."""
    if progress is None:
        return lambda _message: None
    return lambda message: progress(Progress(stage, message))
