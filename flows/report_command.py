"""``slidewatch report RUN``: wiring from the command line to :mod:`pipeline.products.report`.

A plain function with typer annotations; the main CLI registers it with
``app.command("report")(report)``. No maths here: the run directory is passed to
:func:`pipeline.products.report.write_report` and the path of the HTML file is printed; one
``note:`` line (standard error) says each fallback (no DEM, so no hillshade; LSI classes; a figure left out).
Slidewatch errors print one line and exit with the error's code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from flows.console import err_console, friendly_errors, out_console

__all__ = ["report"]


@friendly_errors
def report(
    run: Annotated[Path, typer.Argument(help="Run directory OUT/<region>/<start>_<end> (holds risk.zarr).")],
    out: Annotated[
        Path | None, typer.Option("--out", help="HTML file to write (default: RUN/report.html).")
    ] = None,
    max_pixels: Annotated[
        int, typer.Option("--max-pixels", min=16,
                          help="Longest side of the map's layer images, px (each float layer and the hillshade "
                               "add about 1 MB per zone at 1024).")
    ] = 1024,
    cell_px: Annotated[
        int, typer.Option("--cell-px", min=1, help="Grid-cell edge for the per-cell statistics, px.")
    ] = 512,
) -> None:
    """Write a self-contained offline HTML report of a run: a map of its layers over a hillshade
    (Leaflet, inlined), statistics, figures and provenance."""
    from pipeline.products.report import write_report

    notes = err_console()
    path = write_report(run, out, max_pixels=max_pixels, cell_px=cell_px,
                        on_note=lambda text: notes.print(f"note: {text}", soft_wrap=True, markup=False, highlight=False))
    size_kib = path.stat().st_size / 1024
    out_console().print(f"report: {path} ({size_kib:,.0f} KiB, self-contained; open it in any browser)", soft_wrap=True)
