"""Are a model's inputs like the ones it was trained on? Per-channel range checks.

A checkpoint records, for each input channel, the range that held the bulk of its
training pixels (the 0.5th and 99.5th percentiles, raw units). Before inference the run
measures, per channel, the share of valid pixels that fall outside that range widened by
a margin (:data:`DRIFT_MARGIN` of its width on each side). A share above
:data:`DRIFT_LIMIT` means the model is asked about values it never saw: the run says so
in one line naming the channel (or refuses with ``--strict``) and records it.

1 % of training pixels lie outside the recorded range by construction; with the margin,
far fewer do, so 5 % outside is a clear sign of another region, season, sensor or
processing (for example reflectances scaled by 10,000 instead of 1, or a DEM in feet).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import dask
import numpy as np
import xarray as xr

__all__ = ["DRIFT_LIMIT", "DRIFT_MARGIN", "ChannelDrift", "channel_drift", "drifted"]

#: Share of valid pixels outside the widened training range above which a channel drifts.
DRIFT_LIMIT = 0.05
#: The training range is widened by this share of its width on each side.
DRIFT_MARGIN = 0.10


@dataclass(frozen=True)
class ChannelDrift:
    """One channel's inputs against its training range."""

    channel: str
    train_range: tuple[float, float]
    outside: float  #: share of valid pixels outside the widened range (0..1)
    valid_pixels: int
    median: float | None  #: median of the valid inputs (to say which way they moved)

    @property
    def drifted(self) -> bool:
        return self.outside > DRIFT_LIMIT

    def describe(self) -> str:
        lo, hi = self.train_range
        where = f", median {self.median:.4g}" if self.median is not None else ""
        return f"{self.channel}: {self.outside:.0%} of pixels outside its training range [{lo:.4g}, {hi:.4g}]{where}"

    def to_attrs(self) -> dict:
        return asdict(self)


def channel_drift(ds: xr.Dataset, ranges: Mapping[str, Sequence[float]], margin: float = DRIFT_MARGIN,
                  median_sample: int = 200_000) -> list[ChannelDrift]:
    """Each channel of ``ranges`` present in ``ds``: the share of its valid pixels outside
    ``[lo - m, hi + m]`` with ``m = margin · (hi - lo)``. Lazy and chunked (one pass, all
    channels at once); the median comes from a strided sample of at most ``median_sample``."""
    lazy = {}
    for name, rng in ranges.items():
        if name not in ds.data_vars:
            continue
        lo, hi = float(rng[0]), float(rng[1])
        m = margin * max(hi - lo, 0.0)
        v = ds[name]
        valid = np.isfinite(v)
        outside = valid & ((v < lo - m) | (v > hi + m))
        step = max(1, int(np.ceil(np.sqrt(v.size / max(1, median_sample)))))
        sample = v.isel(y=slice(None, None, step), x=slice(None, None, step))
        lazy[name] = (outside.sum(), valid.sum(), sample, (lo, hi))
    computed = dask.compute({k: (a.data, b.data, c.data) for k, (a, b, c, _) in lazy.items()})[0]
    out = []
    for name, (n_out, n_valid, sample_values) in computed.items():
        n_valid = int(n_valid)
        finite = np.asarray(sample_values, dtype=np.float64)
        finite = finite[np.isfinite(finite)]
        med = float(np.median(finite)) if finite.size else float("nan")
        out.append(ChannelDrift(name, lazy[name][3], float(n_out) / n_valid if n_valid else 0.0, n_valid,
                                med if np.isfinite(med) else None))
    return out


def drifted(drifts: Sequence[ChannelDrift]) -> list[ChannelDrift]:
    """The channels whose inputs lie outside their training range (see :data:`DRIFT_LIMIT`)."""
    return [d for d in drifts if d.drifted]
