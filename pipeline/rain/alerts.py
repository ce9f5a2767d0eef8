"""Alerts and their ledger.

* An :class:`Alert` is a rainfall event above its region's threshold; its id hashes region,
  event start hour and precipitation source, so repeated checks of one storm give one id.
* The :class:`AlertLedger` (``OUT/alerts.jsonl``, JSON lines, appended under an exclusive
  file lock) makes sure an alert triggers at most one run, even when several watch
  processes check at once; it records each alert's run directory and status.
* Beside the ledger, ``OUT/alerts/<alert id>.png`` pictures each alert against its threshold
  (:meth:`AlertLedger.plot_path`; drawn by ``slidewatch watch`` with
  :func:`pipeline.products.plots.alert_plot`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pipeline.core.errors import StoreError
from pipeline.core.locking import WriterLock
from pipeline.rain.watch import Event, Threshold

__all__ = ["CLAIMED", "FAILED", "SUCCEEDED", "Alert", "AlertLedger", "alert_id"]

#: Alert statuses in the ledger. An alert claimed once is never claimed again.
CLAIMED, SUCCEEDED, FAILED = "triggered", "succeeded", "failed"



@dataclass(frozen=True)
class Alert:
    """A rainfall event at or above its region's threshold."""

    id: str
    region: str
    event_start: str
    event_end: str
    intensity_mm_h: float
    duration_h: float
    threshold_mm_h: float
    a: float
    b: float
    source: str
    #: ``observed`` (rain that fell) or ``forecast`` (rain a forecast run expects)
    kind: str = "observed"
    #: which threshold judged it: ``intensity-duration`` (a, b) or ``percentile`` (the fields
    #: below; ``a``/``b`` are then unused and ``threshold_mm_h`` is ``threshold_mm / window_h``).
    #: Defaults keep ledgers written before percentile thresholds loadable.
    threshold_kind: str = "intensity-duration"
    #: percentile threshold: the climatology's percentile of ``window_h``-hour accumulations, mm
    threshold_mm: float | None = None
    #: percentile threshold: the region-mean accumulation over ``window_h`` hours that was judged, mm
    accumulation_mm: float | None = None
    percentile: float | None = None
    window_h: float | None = None

    @classmethod
    def from_event(cls, event: Event, threshold: Threshold, kind: str = "observed", *, source: Any = None,
                   now: Any = None) -> Alert:
        """The alert of ``event`` under ``threshold`` (whether or not it is exceeded);
        ``source`` and ``now`` are what a percentile threshold reads the accumulation from
        (:meth:`pipeline.rain.watch.Threshold.judge`)."""
        common = dict(id=alert_id(event.region, event.start, event.source), region=event.region,
                      event_start=event.start.isoformat(), event_end=event.end.isoformat(),
                      intensity_mm_h=event.intensity_mm_h, duration_h=event.duration_h, a=threshold.a,
                      b=threshold.b, source=event.source, kind=kind)
        if threshold.kind == "intensity-duration":
            return cls(**common, threshold_mm_h=threshold.intensity(event.duration_h))
        j = threshold.judge(event, source, now)
        return cls(**common, threshold_mm_h=j.threshold_mm_h, threshold_kind=j.kind, threshold_mm=j.threshold,
                   accumulation_mm=j.value, percentile=j.percentile, window_h=j.window_h)

    @property
    def start(self) -> datetime:
        return datetime.fromisoformat(self.event_start)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def alert_id(region: str, start: datetime, source: str) -> str:
    """Stable id: sha256 of region, event start hour (UTC) and source label, 16 hex digits."""
    if start.tzinfo is not None:
        start = start.astimezone(timezone.utc)
    key = f"{region}|{start:%Y-%m-%dT%H}|{source}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


class AlertLedger:
    """Append-only JSON-lines record of alerts and the runs they triggered.

    Every change appends one line under the exclusive
    :class:`~pipeline.core.locking.WriterLock` on ``<path>.lock`` (removed when released);
    the latest line of an id is its state. :meth:`claim` checks and records in one locked
    step, so of several processes checking the same alert exactly one gets ``True``.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    @property
    def plots_dir(self) -> Path:
        """``OUT/alerts/`` for ``OUT/alerts.jsonl``: the alerts' pictures."""
        return self.path.with_name(self.path.stem)

    def plot_path(self, alert_id: str) -> Path:
        """``OUT/alerts/<alert id>.png``, the picture of one alert (ValueError for an id that
        is not a plain file name, e.g. from an edited ledger)."""
        if not re.fullmatch(r"[0-9A-Za-z_-]{1,64}", str(alert_id)):
            raise ValueError(f"alert id {alert_id!r} is not a plain name")
        return self.plots_dir / f"{alert_id}.png"

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    def _locked(self) -> WriterLock:
        """The ledger's lock, waited for without limit: ``with self._locked(): ...``."""
        return WriterLock(self.lock_path, target=self.path)

    def _read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        out = []
        for n, line in enumerate(self.path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except ValueError:
                raise StoreError(f"Alert ledger {self.path} line {n} is not JSON.",
                                 "repair or move the file (it is an append-only log).") from None
        return out

    def _append(self, record: Mapping[str, Any]) -> None:
        line = (json.dumps(record, sort_keys=True, default=str) + "\n").encode()
        fd = os.open(self.path, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    def records(self) -> dict[str, dict[str, Any]]:
        """The latest state of every alert, by id."""
        with self._locked():
            lines = self._read()
        state: dict[str, dict[str, Any]] = {}
        for rec in lines:
            state[rec["id"]] = {**state.get(rec["id"], {}), **rec}
        return state

    def get(self, alert_id: str) -> dict[str, Any] | None:
        """The latest state of one alert, or ``None``."""
        return self.records().get(alert_id)

    def claim(self, alert: Alert, run_dir: str | os.PathLike | None = None) -> bool:
        """Record ``alert`` as triggered and return True, unless it was recorded before
        (by this or any other process), then return False."""
        with self._locked():
            if any(rec.get("id") == alert.id for rec in self._read()):
                return False
            self._append({**alert.as_dict(), "status": CLAIMED, "run_dir": str(run_dir) if run_dir else None,
                          "recorded": datetime.now(timezone.utc).isoformat()})
            return True

    def update(self, alert_id: str, status: str, run_dir: str | os.PathLike | None = None,
               error: str | None = None) -> None:
        """Append the outcome of an alert's run (``succeeded`` / ``failed``)."""
        rec: dict[str, Any] = {"id": alert_id, "status": status,
                               "recorded": datetime.now(timezone.utc).isoformat()}
        if run_dir is not None:
            rec["run_dir"] = str(run_dir)
        if error is not None:
            rec["error"] = error
        with self._locked():
            self._append(rec)
