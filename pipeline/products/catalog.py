"""The run's static STAC catalog: a collection, one item per zone, and the model (MLM).

:func:`write_catalog` (called by :func:`pipeline.products.stac_item.export_run`) writes::

    RUN/exports/collection.json                      the run (:func:`run_collection`)
    RUN/exports/items/<collection id>-<zone>.json    one per zone (stac_item.zone_item)
    RUN/exports/items/slidewatch-model-<sha12>.json  the model (:func:`model_item`)

The catalog is ``SELF_CONTAINED`` (pystac's catalog type): no self links, every link
relative, every asset href relative to its file, so the folder can be moved, copied or
served as it is. Two kinds of href are absolute on purpose: the ``derived_from`` links of
the zone items to their input items (their canonical URL; the title says
``<collection>/<id>``), and the model asset when the checkpoint lives outside the run
folder (a ``file://`` URI; the checkpoint is not copied, its ``file:checksum`` says which
file it is).

The model item follows the Machine Learning Model extension (MLM 1.4): ``mlm:name``,
architecture, framework, input (the checkpoint's channels, shape and z-score
normalisation), output (the landslide logit), hyper-parameters and accelerator, read
from the checkpoint's safetensors header (the ``slidewatch`` metadata document that
``models.checkpoint`` writes; no tensor is read and torch is not imported). Its asset
carries the ``mlm:model`` role, ``mlm:artifact_type`` and the file extension's checksum
and size. Each zone item links to it with ``rel="derived_from"`` and its ``mlm:name``.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pystac
import xarray as xr
from pystac.extensions.file import FileExtension
from pystac.extensions.mlm import MLMExtension
from pystac.extensions.projection import ProjectionExtension

from pipeline.core.config import TimeWindow
from pipeline.core.errors import CheckpointError, StoreError
from pipeline.core.files import file_sha256
from pipeline.core.layout import RunLayout
from pipeline.core.secrets import redact
from pipeline.products.stac_item import (
    CATALOG_FILE, ITEMS_DIR, _add_file_asset, _json_safe, _json_text, _rel, _write_text, collection_id, layer_title,
    zone_item,
)

__all__ = ["CHANNEL_DESCRIPTIONS", "CheckpointHeader", "MLM_ARTIFACT_TYPE", "MODEL_MEDIA_TYPE", "catalog_checkpoint",
           "model_item", "read_checkpoint_header", "run_collection", "write_catalog"]

log = logging.getLogger(__name__)

#: How the checkpoint was written (``safetensors.torch.save_file`` with JSON metadata).
MLM_ARTIFACT_TYPE = "safetensors.torch.save_file"
#: MLM's advice for framework files without a registered type, with the container named.
MODEL_MEDIA_TYPE = "application/octet-stream; framework=pytorch; profile=safetensors"
_CHECKPOINT_FORMAT = "slidewatch-checkpoint"
_MAX_HEADER = 100_000_000  # safetensors' own limit on the JSON header
#: What each model channel is (the six factors of the method and the LSI).
CHANNEL_DESCRIPTIONS = {
    "slope": "terrain slope (degrees) from Copernicus DEM GLO-30",
    "dem": "elevation (m) from Copernicus DEM GLO-30",
    "ndvi": "NDVI = (B08 - B04) / (B08 + B04), Sentinel-2 L2A median",
    "ndwi": "NDWI = (B03 - B08) / (B03 + B08), Sentinel-2 L2A median",
    "ndbi": "NDBI = (B11 - B08) / (B11 + B08), Sentinel-2 L2A median",
    "smi": "soil-moisture index from Sentinel-1 VV/VH backscatter",
    "lsi": "landslide susceptibility index (weighted factors through a sigmoid)",
}
_FIX = "pass the model.safetensors written by `slidewatch train` (or export without a checkpoint)."


@dataclass(frozen=True)
class CheckpointHeader:
    """What the catalog says of a checkpoint, read from its safetensors header."""

    path: Path
    #: the ``slidewatch`` metadata document (architecture, hyperparameters, channels, ...)
    metadata: dict[str, Any]
    #: number of values over all tensors (the model's parameters and buffers)
    parameters: int
    size: int
    sha256: str




def read_checkpoint_header(path: str | os.PathLike) -> CheckpointHeader:
    """Read a slidewatch checkpoint's metadata and tensor sizes from its safetensors header.

    Only the header is parsed (8-byte length + JSON); no tensor is loaded, nothing is
    unpickled and torch is not imported. The metadata is not validated against the
    network (``models.checkpoint.read_metadata`` does that when a model is loaded); only
    what the catalog needs is checked. Raises CheckpointError for a missing file, a file
    that is not safetensors or one without slidewatch metadata.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else 0
            if not 1 < n <= min(_MAX_HEADER, size - 8):
                raise CheckpointError(f"{path} is not a safetensors checkpoint (bad header length).", _FIX)
            header = json.loads(f.read(n))
        digest = file_sha256(path)
    except OSError as exc:
        raise CheckpointError(f"Cannot read the checkpoint {path}: {exc}.", _FIX) from exc
    except ValueError as exc:
        raise CheckpointError(f"{path}: the safetensors header is not JSON ({exc}).", _FIX) from exc
    raw = (header.get("__metadata__") or {}).get("slidewatch") if isinstance(header, dict) else None
    try:
        meta = json.loads(raw) if isinstance(raw, str) else None
    except ValueError:
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != _CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is a safetensors file without slidewatch metadata.", _FIX)
    channels = meta.get("channels")
    if not (isinstance(channels, list) and channels and all(isinstance(c, str) for c in channels)
            and isinstance(meta.get("architecture"), str)):
        raise CheckpointError(f"{path}: its metadata lacks the architecture or the channel list.", _FIX)
    parameters = sum(math.prod(t.get("shape", [])) for k, t in header.items()
                     if k != "__metadata__" and isinstance(t, dict))
    return CheckpointHeader(path=path, metadata=meta, parameters=int(parameters), size=size, sha256=digest)


def _model_href(checkpoint: Path, run_dir: Path, base: Path) -> str:
    """Relative to ``base`` when the checkpoint is inside the run folder, else a ``file://`` URI."""
    resolved = checkpoint.resolve()
    if resolved.is_relative_to(run_dir.resolve()):
        return _rel(resolved, base)
    return resolved.as_uri()


def _created(meta: Mapping[str, Any], path: Path) -> datetime:
    try:
        created = datetime.fromisoformat(str(meta.get("created")))
        return created if created.tzinfo else created.replace(tzinfo=timezone.utc)
    except ValueError:
        return datetime.fromtimestamp(path.stat().st_mtime, tz=timezone.utc)


def _redacted(v: Any) -> Any:
    """``v`` as JSON with credentials scrubbed from every string (training provenance may hold URLs)."""
    v = _json_safe(v)
    if isinstance(v, dict):
        return {k: _redacted(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_redacted(x) for x in v]
    return redact(v) if isinstance(v, str) else v


def model_item(checkpoint: CheckpointHeader, *, run_dir: str | os.PathLike,
               item_path: str | os.PathLike) -> pystac.Item:
    """The model as a STAC item with the MLM extension, its checkpoint as the ``model`` asset.

    Properties: ``mlm:name`` (``slidewatch-<architecture>-<sha12>``), ``mlm:architecture``
    (U-Net), ``mlm:tasks`` (semantic segmentation), ``mlm:framework`` PyTorch and its
    version, ``mlm:total_parameters``, ``mlm:pretrained`` false (trained from scratch),
    ``mlm:accelerator`` null (CPU, or a CUDA GPU when present), ``mlm:input`` (the
    checkpoint's channels in order, shape ``[-1, C, -1, -1]``, float32, one z-score
    ``value_scaling`` per channel from its normalisation), ``mlm:output`` (the landslide
    logit, sigmoid for the probability), ``mlm:hyperparameters`` and the channels as
    STAC 1.1 ``bands``; the calibration, metrics and training world as ``slidewatch:*``.
    The item has no geometry (where the model applies is what its training world says)
    and its datetime is the checkpoint's ``created``. The asset href is relative to
    ``item_path`` when the checkpoint is inside ``run_dir``, else a ``file://`` URI.
    """
    meta = checkpoint.metadata
    arch = str(meta["architecture"])
    channels = [str(c) for c in meta["channels"]]
    hp = {str(k): _json_safe(v) for k, v in (meta.get("hyperparameters") or {}).items() if k != "channels"}
    norm = meta.get("normalisation") or {}
    means, stds = list(norm.get("mean") or []), list(norm.get("std") or [])
    scaling = ([{"type": "z-score", "mean": float(m), "stddev": float(s)} for m, s in zip(means, stds)]
               if len(means) == len(stds) == len(channels) else None)
    n_out = int(hp.get("num_classes", 1) or 1)
    thresholds = (meta.get("calibration") or {}).get("class_thresholds")
    name = f"slidewatch-{arch}-{checkpoint.sha256[:12]}"
    software = meta.get("software") or {}
    props: dict[str, Any] = {
        "title": f"slidewatch landslide model {arch} ({checkpoint.sha256[:12]})",
        "description": (f"{arch} over {len(channels)} channels ({', '.join(channels)}), trained by slidewatch "
                        "on a landslide inventory; it outputs the logit of a landslide at each pixel."),
        "mlm:name": name,
        "mlm:architecture": "U-Net",
        "mlm:tasks": ["semantic-segmentation"],
        "mlm:framework": "PyTorch",
        "mlm:total_parameters": checkpoint.parameters,
        "mlm:pretrained": False,
        "mlm:pretrained_source": None,
        "mlm:accelerator": None,
        "mlm:accelerator_constrained": False,
        "mlm:accelerator_summary": "runs on CPU; uses a CUDA GPU when one is present (device='auto')",
        "mlm:input": [{
            "name": "factors and LSI",
            "bands": channels,
            "input": {"shape": [-1, len(channels), -1, -1], "dim_order": ["batch", "channel", "height", "width"],
                      "data_type": "float32"},
            "description": ("channels in this order on a 10 m grid; height and width are padded to a multiple of "
                            f"2**depth (depth {hp.get('depth', '?')}); NaN pixels are filled with the channel mean"),
            "value_scaling": scaling,
            "resize_type": None,
        }],
        "mlm:output": [{
            "name": "landslide logit",
            "tasks": ["semantic-segmentation"],
            "result": {"shape": [-1, n_out, -1, -1], "dim_order": ["batch", "channel", "height", "width"],
                       "data_type": "float32"},
            "description": ("logit of a landslide; sigmoid gives the susceptibility (0..1), classed low / medium / "
                            f"high at {thresholds if thresholds else 'the default thresholds'}"),
            "classification:classes": [
                {"value": 0, "name": "no-landslide", "description": "no landslide (sigmoid < 0.5)"},
                {"value": 1, "name": "landslide", "description": "landslide (sigmoid >= 0.5)"},
            ],
            "post_processing_function": {"format": "python", "expression": "torch.sigmoid"},
        }],
        "bands": [{"name": c, "description": CHANNEL_DESCRIPTIONS.get(c, c), "data_type": "float32"}
                  for c in channels],
        "slidewatch:checkpoint_sha256": checkpoint.sha256,
        "slidewatch:calibration": _redacted(meta.get("calibration") or {}),
        "slidewatch:metrics": _redacted(meta.get("metrics") or {}),
        "slidewatch:training": _redacted({"provenance": meta.get("provenance") or {}, "world": meta.get("world") or {},
                                          "inputs": meta.get("inputs") or {}}),
        "slidewatch:software": _redacted(software),
    }
    if hp:
        props["mlm:hyperparameters"] = hp
    if software.get("torch"):
        props["mlm:framework_version"] = str(software["torch"])
    item = pystac.Item(id=f"slidewatch-model-{checkpoint.sha256[:12]}", geometry=None, bbox=None,
                       datetime=_created(meta, checkpoint.path), properties=props)
    MLMExtension.add_to(item)
    base = Path(item_path).parent
    asset = pystac.Asset(
        href=_model_href(checkpoint.path, Path(run_dir), base), media_type=MODEL_MEDIA_TYPE,
        roles=["mlm:model", "mlm:weights", "mlm:checkpoint", "model", "weights", "checkpoint"],
        title=f"{arch} checkpoint (safetensors: weights + slidewatch metadata)",
        # STAC 1.1 allows item-level bands only when an asset has bands: the names, defined above
        extra_fields={"mlm:artifact_type": MLM_ARTIFACT_TYPE, "bands": [{"name": c} for c in channels]},
    )
    item.add_asset("model", asset)
    FileExtension.ext(asset, add_if_missing=True).apply(checksum="1220" + checkpoint.sha256, size=checkpoint.size)
    return item


def run_collection(
    items: Sequence[pystac.Item],
    *,
    region: str,
    collection_path: str | os.PathLike,
    region_files: Mapping[str, str | os.PathLike] | None = None,
    notes: Sequence[str] = (),
) -> pystac.Collection:
    """The collection of a run's zone ``items`` (built by ``zone_item``; items added later).

    Extent: the overall bbox of the zones then each zone's, and the time window. Summaries:
    ``proj:code``, ``gsd`` and the zones. ``item_assets``: every asset key of the zone items
    (title without the zone, type, roles). ``region_files`` (``write_region_mosaic``'s result) are
    collection assets ``region_<key>`` (COGs with their raster, projection and classes; QGIS
    styles), hrefs relative to ``collection_path``. ``notes`` (fallbacks announced during
    the export) go to ``slidewatch:notes``. License ``other``: the product contains
    modified Copernicus Sentinel data.
    """
    if not items:
        raise StoreError("No zone item to put in the collection.", "export a run with at least one zone.")
    bboxes = [list(it.bbox) for it in items if it.bbox]
    overall = [min(b[0] for b in bboxes), min(b[1] for b in bboxes),
               max(b[2] for b in bboxes), max(b[3] for b in bboxes)]
    starts = [it.common_metadata.start_datetime for it in items]
    ends = [it.common_metadata.end_datetime for it in items]
    start, end = min(d for d in starts if d), max(d for d in ends if d)
    zones = [str(it.properties.get("slidewatch:zone")) for it in items]
    coll_id = collection_id(region, TimeWindow(start.date(), end.date()))
    years = sorted({start.year, end.year})
    coll = pystac.Collection(
        id=coll_id,
        title=f"slidewatch landslide risk: {region} {start.date()}..{end.date()}",
        description=(
            f"Landslide susceptibility, hazard and risk classes for {region} from {start.date()} to {end.date()}, "
            f"one item per UTM zone ({', '.join(zones)}), mapped by slidewatch from Sentinel-1, Sentinel-2 and the "
            f"Copernicus DEM. Contains modified Copernicus Sentinel data {'-'.join(map(str, years))}."
        ),
        extent=pystac.Extent(pystac.SpatialExtent([overall, *bboxes] if len(bboxes) > 1 else [overall]),
                             pystac.TemporalExtent([[start, end]])),
        license="other",
        keywords=["landslide", "susceptibility", "hazard", "Sentinel-1", "Sentinel-2", "Copernicus DEM"],
        providers=[
            pystac.Provider("slidewatch", roles=[pystac.ProviderRole.PROCESSOR, pystac.ProviderRole.PRODUCER],
                            description="landslide risk mapping pipeline"),
            pystac.Provider("European Space Agency / Copernicus", roles=[pystac.ProviderRole.LICENSOR],
                            description="Sentinel-1, Sentinel-2 and Copernicus DEM input data"),
        ],
        summaries=pystac.Summaries({
            "proj:code": sorted({str(it.properties["proj:code"]) for it in items if it.properties.get("proj:code")}),
            "gsd": sorted({float(it.properties["gsd"]) for it in items if it.properties.get("gsd")}),
            "slidewatch:zone": zones,
        }),
        catalog_type=pystac.CatalogType.SELF_CONTAINED,
    )
    ProjectionExtension.add_to(coll)
    if notes:
        coll.extra_fields["slidewatch:notes"] = list(notes)
    for item, zone in zip(items, zones):  # every asset key of any zone item, described once
        for key, asset in item.assets.items():
            if key not in coll.item_assets:
                coll.item_assets[key] = pystac.ItemAssetDefinition.create(
                    title=(asset.title or key).removesuffix(f", zone {zone}"), description=None,
                    media_type=asset.media_type, roles=list(asset.roles or []),
                )
    base = Path(collection_path).parent
    for key, path in sorted((region_files or {}).items()):
        _add_file_asset(coll, f"region_{key}", Path(path), base, f"{layer_title(key)}, region mosaic")
    return coll


def catalog_checkpoint(checkpoint: str | os.PathLike | None,
                       zones: Mapping[str, xr.Dataset]) -> tuple[CheckpointHeader | None, list[str]]:
    """The checkpoint to describe as the model item, and the notes of the fallbacks.

    The header of ``checkpoint`` when it is the file the mosaic was made with (its SHA-256
    is the groups' ``checkpoint_sha256``, or they record none); else ``None`` and a note,
    also announced in one log line: no checkpoint given, the file is gone, or it is another
    file. Raises CheckpointError for a file that is not a slidewatch checkpoint.
    """
    recorded = {str(ds.attrs["checkpoint_sha256"]) for ds in zones.values() if ds.attrs.get("checkpoint_sha256")}
    if checkpoint is None:
        note = "no checkpoint file was given (run.json has none): the catalog has no model item"
    elif not Path(checkpoint).is_file():
        note = f"the checkpoint {checkpoint} is not there any more: the catalog has no model item"
    else:
        header = read_checkpoint_header(checkpoint)
        if not recorded or recorded == {header.sha256}:
            return header, []
        note = (f"the checkpoint {checkpoint} (SHA-256 {header.sha256[:12]}) is not the one the mosaic was made with "
                f"({', '.join(sorted(s[:12] for s in recorded))}): the catalog has no model item")
    log.warning("STAC export: %s", note)
    return None, [note]


def write_catalog(
    run_dir: str | os.PathLike,
    zones: Mapping[str, xr.Dataset],
    *,
    cogs: Mapping[str, Mapping[str, str | os.PathLike]] | None = None,
    region_files: Mapping[str, str | os.PathLike] | None = None,
    quicklooks: Mapping[str, str | os.PathLike] | None = None,
    run_info: Mapping[str, Any] | None = None,
    checkpoint: CheckpointHeader | None = None,
    notes: Sequence[str] = (),
    require_complete: bool = True,
) -> Path:
    """Build and write a run's catalog (module docstring); return ``RUN/exports/collection.json``.

    ``zones`` maps zone names to their ``risk.zarr`` groups, ``cogs`` each zone to
    ``write_cogs``' result, ``region_files`` is ``write_region_mosaic``'s result (collection
    assets ``region_<layer>``), ``quicklooks`` each zone to its PNG. ``checkpoint`` and
    ``notes`` are :func:`catalog_checkpoint`'s result (no model item without a checkpoint).
    Every object is built and serialised (every refusal raised) before any file is written;
    then each item is written atomically, the collection last; item files of an earlier
    export that are no longer in the catalog are removed, as is the single region item of
    older versions (``RUN/exports/<collection id>.json``).
    """
    run = Path(run_dir)
    layout = RunLayout(run)
    root_file = layout.exports / CATALOG_FILE
    items_dir = layout.exports / ITEMS_DIR
    names = sorted(zones)
    items = [zone_item(run, z, zones[z], cogs=(cogs or {}).get(z), quicklook=(quicklooks or {}).get(z),
                       item_path=items_dir / "zone.json", run_info=run_info, require_complete=require_complete)
             for z in names]
    model = model_item(checkpoint, run_dir=run, item_path=items_dir / "model.json") if checkpoint is not None else None
    region = str(items[0].properties["slidewatch:region"])
    coll = run_collection(items, region=region, collection_path=root_file,
                          region_files=region_files, notes=notes)
    coll.set_self_href(str(root_file))
    members = [*items, *([model] if model is not None else [])]
    for item in members:
        coll.add_item(item)
        item.set_self_href(str(items_dir / f"{item.id}.json"))
    if model is not None:
        for item in items:
            item.add_link(pystac.Link(rel="derived_from", target=model, media_type=str(pystac.MediaType.GEOJSON),
                                      title=f"model {model.properties['mlm:name']}",
                                      extra_fields={"mlm:name": model.properties["mlm:name"]}))
    texts = [(items_dir / f"{it.id}.json", _json_text(it.to_dict(include_self_link=False, transform_hrefs=True),
                                                      f"STAC item {it.id}")) for it in members]
    texts.append((root_file, _json_text(coll.to_dict(include_self_link=False, transform_hrefs=True),
                                        f"STAC collection {coll.id}")))
    for path, text in texts:  # the items first, the collection (the catalog's entry) last
        _write_text(text, path)
    keep = {path.name for path, _ in texts}
    for stale in items_dir.glob("*.json"):
        if stale.name not in keep:
            stale.unlink(missing_ok=True)
    (layout.exports / f"{coll.id}.json").unlink(missing_ok=True)
    return root_file
