"""Safe model checkpoints: one ``.safetensors`` file, weights plus JSON metadata, no pickle.

Layout: a standard safetensors file whose header ``__metadata__`` holds one key,
``"slidewatch"``, a JSON document::

    {
      "format": "slidewatch-checkpoint", "format_version": 1,
      "architecture": "EnhancedUNet",
      "hyperparameters": {"channels": [...], "num_classes": 1, "base_width": 16, ...},
      "channels": ["slope", "dem", "ndvi", "ndwi", "smi", "ndbi", "lsi"],
      "normalisation": {"mean": [...], "std": [...]},
      "output": "logit",
      "provenance": {"cube": ..., "inventory": ..., "split": {...}, ...},
      "metrics": {...},
      "software": {"slidewatch": "0.1.0", "torch": "2.13.0"},
      "created": "2026-11-21T15:31:00+00:00"
    }

Weights and metadata live in one file, so :func:`sha256` of that file identifies both
(the STAC item records it). Loading never unpickles anything: the file is opened with
``safetensors.safe_open`` (header only); a file it refuses is reported as a torch.save
zip or a Python pickle when its magic bytes say so, else as corrupt or truncated. Then
the JSON is validated (format, architecture, hyper-parameters, channel list,
normalisation lengths) and every tensor's name and shape is checked against the network
the metadata describes. Every failure raises :class:`~pipeline.core.errors.CheckpointError`.
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

import pipeline
from models.data import NormStats
from models.networks import ARCHITECTURES, build_model
from pipeline.core.errors import CheckpointError
from pipeline.core.files import file_sha256

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "CheckpointMetadata",
    "check_channel_list",
    "load_checkpoint",
    "read_metadata",
    "save_checkpoint",
    "sha256",
]

FORMAT = "slidewatch-checkpoint"
FORMAT_VERSION = 1
_META_KEY = "slidewatch"
_MAX_HEADER = 100_000_000  # safetensors' own limit on the JSON header
#: A pickle of protocol 2 and later starts with PROTO (0x80) and the protocol number.
_PICKLE_PROTOCOLS = (b"\x02", b"\x03", b"\x04", b"\x05")


#: The smallest per-channel std a checkpoint may normalise with (a factor's std is far larger).
MIN_NORM_STD = 1e-6
#: Sizes a checkpoint may ask the network to have (an absurd width allocates terabytes).
HYPERPARAMETER_BOUNDS: dict[str, tuple[int, int]] = {"base_width": (1, 512), "depth": (1, 8), "num_classes": (1, 16)}


@dataclass(frozen=True)
class CheckpointMetadata:
    """Everything needed to rebuild, feed and trace a trained network."""

    architecture: str
    hyperparameters: dict
    channels: tuple[str, ...]
    normalisation: NormStats
    provenance: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    software: dict = field(default_factory=dict)
    output: str = "logit"
    created: str = ""
    format_version: int = FORMAT_VERSION
    #: class thresholds calibrated on validation data (:mod:`models.calibration`); {} when none
    calibration: dict = field(default_factory=dict)
    #: per-channel training ranges, raw units: {"ranges": {channel: [lo, hi]}, "quantiles": [q, q]}
    inputs: dict = field(default_factory=dict)
    #: what the training store said of itself: factor ranges, LSI parameters, rain, hazard mode, region
    world: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "format_version": self.format_version,
            "architecture": self.architecture,
            "hyperparameters": self.hyperparameters,
            "channels": list(self.channels),
            "normalisation": self.normalisation.to_json(),
            "output": self.output,
            "provenance": self.provenance,
            "metrics": self.metrics,
            "software": self.software,
            "created": self.created,
            "calibration": self.calibration,
            "inputs": self.inputs,
            "world": self.world,
        }

    @classmethod
    def from_json(cls, d: object, source: str = "checkpoint") -> CheckpointMetadata:
        """Validate a metadata document; raise :class:`CheckpointError` naming the problem."""
        if not isinstance(d, dict):
            raise CheckpointError(f"{source}: metadata is not a JSON object.")
        if d.get("format") != FORMAT:
            raise CheckpointError(f"{source}: not a slidewatch checkpoint (format={d.get('format')!r}).")
        version = d.get("format_version")
        if version != FORMAT_VERSION:
            raise CheckpointError(
                f"{source}: checkpoint format version {version!r} is not supported "
                f"(this slidewatch reads version {FORMAT_VERSION}).",
                "retrain, or use the slidewatch version that wrote it.",
            )
        missing = [
            k for k in ("architecture", "hyperparameters", "channels", "normalisation") if k not in d
        ]
        if missing:
            raise CheckpointError(f"{source}: metadata lacks {missing}.")
        arch = d["architecture"]
        if arch not in ARCHITECTURES:
            raise CheckpointError(
                f"{source}: unknown architecture {arch!r}; known: {sorted(ARCHITECTURES)}."
            )
        hp = d["hyperparameters"]
        channels = d["channels"]
        if not isinstance(hp, dict):
            raise CheckpointError(f"{source}: hyperparameters must be a JSON object.")
        if not (isinstance(channels, list) and channels and all(isinstance(c, str) for c in channels)):
            raise CheckpointError(f"{source}: channels must be a non-empty list of names.")
        if list(hp.get("channels", channels)) != channels:
            raise CheckpointError(
                f"{source}: hyperparameters channels {hp.get('channels')} differ from "
                f"channels {channels}."
            )
        norm = d["normalisation"]
        try:
            stats = NormStats.from_json(norm)
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{source}: unreadable normalisation {norm!r}.") from exc
        if not (len(stats.mean) == len(stats.std) == len(channels)):
            raise CheckpointError(
                f"{source}: normalisation has {len(stats.mean)} means and {len(stats.std)} "
                f"stds for {len(channels)} channels."
            )
        values = (*stats.mean, *stats.std)
        if not all(math.isfinite(v) for v in values) or any(s < MIN_NORM_STD for s in stats.std):
            raise CheckpointError(
                f"{source}: normalisation must be finite with every std >= {MIN_NORM_STD:g}, got mean {list(stats.mean)} "
                f"std {list(stats.std)}; a NaN or tiny std would silently zero or blow up a channel.",
                "retrain the model (slidewatch train) or restore the original checkpoint file.",
            )
        for key, (lo, hi) in HYPERPARAMETER_BOUNDS.items():
            value = hp.get(key)
            if value is not None and not (isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi):
                raise CheckpointError(
                    f"{source}: hyperparameter {key} = {value!r} is outside [{lo}, {hi}] (building it could exhaust memory).",
                    "retrain the model (slidewatch train) or restore the original checkpoint file.",
                )
        if d.get("output", "logit") != "logit":
            raise CheckpointError(f"{source}: unsupported output kind {d.get('output')!r}.")
        calibration, inputs, world = (_object(d, key, source) for key in ("calibration", "inputs", "world"))
        _check_calibration(calibration, source)
        _check_inputs(inputs, channels, source)
        return cls(
            architecture=arch,
            hyperparameters={**hp, "channels": list(channels)},
            channels=tuple(channels),
            normalisation=stats,
            provenance=d.get("provenance") or {},
            metrics=d.get("metrics") or {},
            software=d.get("software") or {},
            output="logit",
            created=d.get("created", ""),
            format_version=version,
            calibration=calibration,
            inputs=inputs,
            world=world,
        )


def _object(d: dict, key: str, source: str) -> dict:
    value = d.get(key) or {}
    if not isinstance(value, dict):
        raise CheckpointError(f"{source}: metadata {key!r} must be a JSON object, not {type(value).__name__}.",
                              "retrain the model (slidewatch train) or restore the original checkpoint file.")
    return value


def _finite(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_calibration(cal: dict, source: str) -> None:
    t = cal.get("class_thresholds")
    if t is None:
        return
    if not (isinstance(t, list) and len(t) == 2 and all(_finite(v) for v in t) and 0 <= t[0] < t[1] <= 1):
        raise CheckpointError(f"{source}: calibrated class thresholds {t!r} must be two numbers 0 <= t1 < t2 <= 1.",
                              "retrain the model (slidewatch train) or restore the original checkpoint file.")


def _check_inputs(inputs: dict, channels: list, source: str) -> None:
    ranges = inputs.get("ranges") or {}
    bad = [c for c, r in ranges.items() if c not in channels or not (
        isinstance(r, list) and len(r) == 2 and all(_finite(v) for v in r) and r[0] <= r[1])] \
        if isinstance(ranges, dict) else ["(not an object)"]
    if bad:
        raise CheckpointError(f"{source}: training input ranges of {bad} are not [low, high] pairs of model channels.",
                              "retrain the model (slidewatch train) or restore the original checkpoint file.")


def sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file (weights and metadata together for a checkpoint)."""
    return file_sha256(path)


def check_channel_list(expected: Sequence[str], got: Sequence[str], what: str = "input") -> None:
    """Raise :class:`CheckpointError` listing missing, extra and misordered channels."""
    expected, got = list(expected), list(got)
    if expected == got:
        return
    missing = [c for c in expected if c not in got]
    extra = [c for c in got if c not in expected]
    parts = [f"{what} channels {got} do not match the checkpoint's {expected}:"]
    if missing:
        parts.append(f"missing {missing}")
    if extra:
        parts.append(f"extra {extra}")
    if not missing and not extra:
        parts.append("same names in a different order")
    raise CheckpointError(
        " ".join(parts) + ".",
        "select/reorder the cube's variables to the checkpoint's channel list, or retrain.",
    )


def save_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    normalisation: NormStats,
    *,
    provenance: dict | None = None,
    metrics: dict | None = None,
    calibration: dict | None = None,
    inputs: dict | None = None,
    world: dict | None = None,
) -> Path:
    """Write ``model`` (weights) and its metadata to ``path`` atomically; return the path.
    ``calibration``, ``inputs`` and ``world`` as :class:`CheckpointMetadata` describes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    hp = model.config()
    meta = CheckpointMetadata(
        architecture=model.architecture,
        hyperparameters=hp,
        channels=tuple(hp["channels"]),
        normalisation=normalisation,
        provenance=provenance or {},
        metrics=metrics or {},
        software={"slidewatch": pipeline.__version__, "torch": torch.__version__.split("+")[0]},
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        calibration=calibration or {},
        inputs=inputs or {},
        world=world or {},
    )
    # validate what we write with the same code that reads it
    CheckpointMetadata.from_json(json.loads(json.dumps(meta.to_json())), str(path))
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata={_META_KEY: json.dumps(meta.to_json(), sort_keys=True)})
    os.replace(tmp, path)
    return path


def _safetensors_metadata(path: Path) -> dict[str, str]:
    """The ``__metadata__`` map of a safetensors file (``{}`` when it has none).

    The file is opened with :func:`safetensors.safe_open`, which parses the header only
    (nothing is unpickled). Only when that fails is the file looked at further, to say
    why in the messages below: a torch.save zip or a Python pickle is refused as such,
    anything else is reported as a truncated or corrupt safetensors file. A valid
    safetensors file is never mistaken for a pickle because its first byte (the low
    byte of the header length) happens to be 0x80.
    """
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist.", "pass the .safetensors file that train wrote.")
    try:
        with safe_open(str(path), "pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as exc:
        raise _not_safetensors(path, exc) from exc


def _not_safetensors(path: Path, exc: Exception) -> CheckpointError:
    """The error for a file that :func:`safetensors.safe_open` refused."""
    detail = str(exc).removeprefix("Error while deserializing header: ")
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            n = int.from_bytes(head, "little")
            plausible = len(head) == 8 and 1 < n <= min(_MAX_HEADER, size - 8)
            first = f.read(min(n, 64)).lstrip()[:1] if plausible else b""
    except OSError as err:
        return CheckpointError(f"cannot read checkpoint {path}: {err}.")
    if head[:4] == b"PK\x03\x04":
        return CheckpointError(
            f"{path} is a zip archive (a torch.save payload); it was refused without "
            "being opened, because loading it would unpickle arbitrary code.",
            "load only slidewatch .safetensors checkpoints; convert trusted weights with "
            "safetensors.torch.save_file.",
        )
    if head[:1] == b"\x80" and head[1:2] in _PICKLE_PROTOCOLS:
        return CheckpointError(
            f"{path} is a Python pickle; it was refused without being unpickled.",
            "load only slidewatch .safetensors checkpoints.",
        )
    if len(head) < 8:
        return CheckpointError(f"{path} is too short to be a safetensors checkpoint.")
    if n <= 1 or n > min(_MAX_HEADER, size - 8):
        return CheckpointError(f"{path} is not a safetensors file (bad header length {n}).")
    if first != b"{":
        return CheckpointError(f"{path} is not a safetensors file (header is not JSON).")
    if "JSON" in detail or "UTF-8" in detail:
        return CheckpointError(f"{path}: corrupt safetensors header ({detail}).")
    return CheckpointError(f"{path}: corrupt or truncated safetensors file ({detail}).")


#: Fix shown with checkpoint errors that carry no more specific one.
_CHECKPOINT_HINT = (
    "use the unmodified model.safetensors written by `slidewatch train` "
    "(models.checkpoint.save_checkpoint); retrain or re-export it if it was edited."
)


def _with_hint(fn):  # type: ignore[no-untyped-def]
    """Give every CheckpointError raised by ``fn`` a "Fix:" (the default one when it has none)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
        try:
            return fn(*args, **kwargs)
        except CheckpointError as exc:
            if exc.hint is not None:
                raise
            raise CheckpointError(exc.message, _CHECKPOINT_HINT) from exc.__cause__

    return wrapper


@_with_hint
def read_metadata(path: str | Path) -> CheckpointMetadata:
    """Read and validate a checkpoint's metadata without loading weights."""
    path = Path(path)
    meta_block = _safetensors_metadata(path)
    if _META_KEY not in meta_block:
        raise CheckpointError(
            f"{path} is a safetensors file without slidewatch metadata.",
            "checkpoints must be written by models.checkpoint.save_checkpoint.",
        )
    try:
        doc = json.loads(meta_block[_META_KEY])
    except ValueError as exc:
        raise CheckpointError(f"{path}: slidewatch metadata is not valid JSON ({exc}).") from exc
    return CheckpointMetadata.from_json(doc, str(path))


@_with_hint
def load_checkpoint(
    path: str | Path,
    device: str | torch.device = "cpu",
    expected_channels: Sequence[str] | None = None,
) -> tuple[torch.nn.Module, CheckpointMetadata]:
    """Rebuild the network from a checkpoint, in eval mode on ``device``.

    Validates metadata, optional ``expected_channels``, tensor names and shapes; raises
    :class:`CheckpointError` on any mismatch.
    """
    path = Path(path)
    meta = read_metadata(path)
    if expected_channels is not None:
        check_channel_list(meta.channels, expected_channels)
    try:
        model = build_model(meta.architecture, **meta.hyperparameters)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(
            f"{path}: hyperparameters {meta.hyperparameters} do not build a "
            f"{meta.architecture}: {exc}"
        ) from exc
    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot read tensors ({exc}).") from exc
    want = model.state_dict()
    missing = sorted(set(want) - set(state))
    unexpected = sorted(set(state) - set(want))
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: tensors do not match a {meta.architecture} "
            f"(missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''})."
        )
    bad = [
        f"{k}: expected {tuple(want[k].shape)}, got {tuple(state[k].shape)}"
        for k in want
        if tuple(want[k].shape) != tuple(state[k].shape)
    ]
    if bad:
        raise CheckpointError(
            f"{path}: tensor shapes do not match the architecture in its metadata: "
            + "; ".join(bad[:5])
            + (f" (+{len(bad) - 5} more)" if len(bad) > 5 else "")
            + "."
        )
    bad_dtype = [k for k in want if want[k].dtype != state[k].dtype]
    if bad_dtype:
        raise CheckpointError(f"{path}: unexpected tensor dtypes for {bad_dtype[:5]}.")
    model.load_state_dict(state, strict=True)
    model.to(device)
    model.eval()
    return model, meta
