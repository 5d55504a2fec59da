"""`bigmodel serve` as a child process (tests, benchmarks/serve_load.py, your own integration tests), and
the processes under one, read from /proc."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bigmodel.errors import InputError


def descendants(pid: int) -> list[int]:
    """Process ids under `pid` (children, theirs, ...), read from /proc; [] where there is no /proc."""
    parents: dict[int, int] = {}
    with contextlib.suppress(OSError):
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                with contextlib.suppress(OSError, IndexError, ValueError):
                    parents[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parents.items() if pp == p]
        found += kids
        todo += kids
    return found


def _cmdline(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text(errors="replace")
    except OSError:
        return None


def wait_gone(procs: dict[int, str], timeout: float) -> None:
    """Wait up to `timeout` s until none of `procs` (pid -> command line) runs any more: Triton's Python stubs
    finish their own clean-up after tritonserver exits."""
    import time

    deadline = time.monotonic() + timeout
    while any(_cmdline(p) == cmd for p, cmd in procs.items()) and time.monotonic() < deadline:
        time.sleep(0.1)



def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """n distinct ports free on `host` now (the OS picks them: parallel test workers never collide)."""
    import socket

    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for s in socks:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class Child:
    """A `bigmodel serve` child process and where it listens."""

    proc: subprocess.Popen
    http: str  # host:port, as tritonclient.http takes it
    grpc: str
    metrics: str
    log: Path

    def descendants(self) -> list[int]:
        """Process ids under the child (tritonserver and its Python stubs), read from /proc."""
        return descendants(self.proc.pid)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, then wait up to `timeout` s (SIGKILL after that); the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


@contextlib.contextmanager
def launched(bundle: str | os.PathLike, *args: str, log: Path, timeout: float = 180.0,
             env: dict[str, str] | None = None, python: str | None = None) -> Iterator[Child]:
    """`bigmodel serve BUNDLE ARGS` on free 127.0.0.1 ports, once it prints "ready"; stopped (SIGTERM) on exit.

    `python`: the interpreter to run it with (default this one; the serve extra may live in its own venv).
    Its stdout and stderr go to `log`; InputError with the log's tail if it exits or is not ready in `timeout` s.
    """
    import sys
    import time

    http, grpc, metrics = free_ports(3)
    cmd = [python or sys.executable, "-m", "bigmodel", "serve", str(bundle), "--host", "127.0.0.1",
           "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics), *args]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    child = Child(proc, f"127.0.0.1:{http}", f"127.0.0.1:{grpc}", f"127.0.0.1:{metrics}", Path(log))
    try:
        deadline = time.monotonic() + timeout
        while b"\nready (" not in Path(log).read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = Path(log).read_text(errors="replace")[-3000:]
                raise InputError(f"bigmodel serve {'exited' if proc.poll() is not None else 'was not ready'} "
                                 f"({' '.join(cmd)}); its log ends:\n{tail}")
            time.sleep(0.2)
        yield child
    finally:
        child.stop()
