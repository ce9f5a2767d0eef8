"""``slidewatch report RUN``: wiring from the command line to :mod:`pipeline.products.report`.

A plain function with typer annotations; the main CLI registers it with
``app.command("report")(report)``. No maths here: the run directory is passed to
:func:`pipeline.products.report.write_report` and the path of the HTML file is printed. Slidewatch
errors print one line and exit with the error's code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from pipeline.core.errors import SlidewatchError

__all__ = ["report"]


def report(
    run: Annotated[Path, typer.Argument(help="Run directory OUT/<region>/<start>_<end> (holds risk.zarr).")],
    out: Annotated[
        Path | None, typer.Option("--out", help="HTML file to write (default: RUN/report.html).")
    ] = None,
    max_pixels: Annotated[
        int, typer.Option("--max-pixels", min=16, help="Longest side of the embedded map image, px.")
    ] = 2048,
    cell_px: Annotated[
        int, typer.Option("--cell-px", min=1, help="Grid-cell edge for the per-cell statistics, px.")
    ] = 512,
) -> None:
    """Write a self-contained offline HTML report (map, statistics, provenance) of a run."""
    from pipeline.products.report import write_report

    try:
        path = write_report(run, out, max_pixels=max_pixels, cell_px=cell_px)
    except SlidewatchError as exc:
        Console(stderr=True).print(f"[red]error:[/red] {exc}", soft_wrap=True)
        raise typer.Exit(code=getattr(exc, "exit_code", 2)) from None
    size_kib = path.stat().st_size / 1024
    Console().print(f"report: {path} ({size_kib:,.0f} KiB, self-contained; open it in any browser)", soft_wrap=True)
