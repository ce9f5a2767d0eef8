"""Start ``crashrun.py`` children and stop them at known points (bounded waits everywhere)."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

CRASHRUN = Path(__file__).resolve().parent / "crashrun.py"
REPO = Path(__file__).resolve().parents[2]


class Child:
    """A running ``crashrun.py``: its events arrive on a queue fed by a reader thread (no
    select on a buffered pipe, which can sit on lines already read)."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stderr: list[str] = []
        threading.Thread(target=self._pump, args=(proc.stdout, self.lines), daemon=True).start()
        threading.Thread(target=self._drain, daemon=True).start()

    @staticmethod
    def _pump(stream, q) -> None:  # type: ignore[no-untyped-def]
        for line in stream:
            q.put(line)
        q.put(None)

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)

    def poll(self) -> int | None:
        return self.proc.poll()


def start(items_dir: Path, out: Path, hang_after: int | None = None, where: str = "tile",
          hang_s: float = 60.0) -> Child:
    """A child running the tiny region into ``out`` (optionally hanging after some tiles)."""
    cmd = [sys.executable, str(CRASHRUN), str(items_dir), str(out), "--hang-s", str(hang_s)]
    if hang_after is not None:
        cmd += ["--hang-after", str(hang_after), "--hang-where", where]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    return Child(proc)


def read_until(child: Child, kind: str, timeout: float = 120.0) -> list[dict]:
    """Events printed by ``child`` up to the first of ``kind``; fails after ``timeout`` s."""
    events: list[dict] = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            line = child.lines.get(timeout=min(left, 1.0))
        except queue.Empty:
            continue
        if line is None:
            break
        if not line.startswith("{"):
            continue
        ev = json.loads(line)
        events.append(ev)
        if ev["kind"] == kind:
            return events
    kill(child)
    raise AssertionError(f"child never reported {kind!r} (events {events}); stderr:\n{''.join(child.stderr)[-3000:]}")


def kill(child: Child) -> None:
    """SIGKILL the child (by its pid) and reap it."""
    if child.proc.poll() is None:
        os.kill(child.pid, signal.SIGKILL)
    child.proc.wait(timeout=30)


def finish(child: Child, timeout: float = 180.0) -> tuple[int, list[dict], str]:
    """Wait for a child; (return code, its events, stderr)."""
    try:
        code = child.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill(child)
        raise
    events: list[dict] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = child.lines.get(timeout=deadline - time.monotonic())
        if line is None:
            break
        if line.startswith("{"):
            events.append(json.loads(line))
    time.sleep(0.1)  # let the stderr thread finish
    return code, events, "".join(child.stderr)
