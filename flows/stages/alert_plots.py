"""Alert pictures: each recorded alert drawn against its threshold, for the watch command
and the watch flow (wiring only: the drawing is :mod:`pipeline.products.plots`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rich.markup import escape

from flows.console import err_console

__all__ = ["write_alert_plots"]


def write_alert_plots(rows: Sequence[dict], ledger_path: Path) -> list[Path]:
    """Draw every alert of ``rows`` that the ledger at ``ledger_path`` (``OUT/alerts.jsonl``) records
    (:func:`pipeline.products.plots.alert_plot` of its record): ``OUT/alerts/<alert id>.png``
    for a new alert, or when that picture is missing, and ``RUN/plots/alert.png`` in the run
    folder a new alert triggered (when the run made it). Alerts of a check-only pass are not
    recorded, so not drawn. A picture that cannot be drawn is announced in one line and
    never fails the watch. Returns the paths written."""
    from pipeline.products.plots import ALERT_PLOT, alert_plot, run_plots_dir, save_plot
    from pipeline.rain.alerts import AlertLedger

    ledger = AlertLedger(ledger_path)
    wanted = [r for r in rows if r.get("alert_id")]
    if not wanted or not ledger.path.is_file():
        return []
    records = ledger.records()
    written: list[Path] = []
    for row in wanted:
        rec = records.get(row["alert_id"])
        if rec is None:
            continue
        try:
            target = ledger.plot_path(rec["id"])
            if not (row.get("new") or not target.exists()):
                continue  # drawn when it was new
            fig = alert_plot(rec)
            written.append(save_plot(fig, target))
            run_dir = Path(row["run_dir"]) if row.get("new") and row.get("run_dir") else None
            if run_dir is not None and run_dir.is_dir():
                written.append(save_plot(fig, run_plots_dir(run_dir) / ALERT_PLOT))
        except Exception as exc:  # noqa: BLE001 - a picture never fails the watch
            err_console().print(f"[yellow]note:[/yellow] alert {escape(str(row['alert_id']))} was not drawn "
                                f"({escape(str(exc))}).", soft_wrap=True)
    return written
