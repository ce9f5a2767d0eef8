"""Quick-look PNGs take a region's name as plain text, whatever characters it has."""

from __future__ import annotations

import numpy as np
import xarray as xr

from pipeline.products.quicklook import write_quicklook


def test_a_region_name_is_never_read_as_mathtext(tmp_path) -> None:  # type: ignore[no-untyped-def]
    lsi = xr.DataArray(np.linspace(0, 1, 64 * 64, dtype="float32").reshape(64, 64), dims=("y", "x"))
    path = write_quicklook(lsi, tmp_path / "q.png", title=r"Landslide susceptibility, x$\foo$")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
