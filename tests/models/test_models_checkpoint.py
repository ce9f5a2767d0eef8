"""Checkpoints (safetensors + JSON, no pickle) and the Predictor."""

from __future__ import annotations

import hashlib
import json
import pickle

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import pipeline
from models.checkpoint import load_checkpoint, read_metadata, save_checkpoint, sha256
from models.data import NormStats, normalise
from models.networks import DEFAULT_CHANNELS, EnhancedUNet, UNet, landslide_logit
from models.predictor import Predictor
from pipeline.core.errors import CheckpointError, InputDataError
from models_testdata import torch_threads  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("torch_threads")

STATS = NormStats(tuple(float(i) for i in range(7)), tuple(1.0 + i for i in range(7)))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    model = EnhancedUNet(base_width=4, depth=2).eval()
    path = save_checkpoint(
        tmp_path_factory.mktemp("ck") / "model.safetensors",
        model,
        STATS,
        provenance={"cube": "c.zarr"},
        metrics={"val": {"dice": 0.5}},
    )
    return path, model


def test_round_trip_gives_identical_outputs(ckpt):
    path, model = ckpt
    loaded, meta = load_checkpoint(path)
    x = torch.randn(2, 7, 37, 45)
    with torch.inference_mode():
        assert torch.equal(model(x), loaded(x))
    assert meta.architecture == "EnhancedUNet"
    assert meta.channels == DEFAULT_CHANNELS
    assert meta.normalisation == STATS
    assert meta.software["slidewatch"] == pipeline.__version__
    assert meta.provenance == {"cube": "c.zarr"} and meta.metrics["val"]["dice"] == 0.5
    assert meta.format_version == 1 and meta.created


def test_sha256_helper(ckpt):
    path, _ = ckpt
    assert sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()


class _Evil:
    marker = ""

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("how", ["pickle", "torch.save"])
def test_pickle_payloads_are_refused_without_unpickling(tmp_path, how):
    marker = tmp_path / "pwned"
    evil = _Evil()
    evil.marker = str(marker)
    path = tmp_path / "model.safetensors"
    if how == "pickle":
        path.write_bytes(pickle.dumps({"state": evil}))
    else:
        torch.save({"state": evil}, path)
    with pytest.raises(CheckpointError, match="refused without being"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError):
        Predictor.from_checkpoint(path, device="cpu")
    assert not marker.exists()
    # sanity: the payload really would have run code
    if how == "pickle":
        pickle.loads(path.read_bytes())
        assert marker.exists()


def test_corrupt_and_foreign_files(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.safetensors")
    (tmp_path / "junk").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_checkpoint(tmp_path / "junk")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(CheckpointError, match="without slidewatch metadata"):
        load_checkpoint(tmp_path / "plain.safetensors")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "badjson.safetensors"), metadata={"slidewatch": "{oops"})
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(tmp_path / "badjson.safetensors")


def _rewrite(src, dst, edit=None, state_edit=None):
    from safetensors import safe_open

    with safe_open(str(src), "pt") as f:
        meta = json.loads(f.metadata()["slidewatch"])
        state = {k: f.get_tensor(k) for k in f.keys()}
    if edit:
        edit(meta)
    if state_edit:
        state_edit(state)
    save_file(state, str(dst), metadata={"slidewatch": json.dumps(meta)})
    return dst


def test_metadata_validation(ckpt, tmp_path):
    path, _ = ckpt
    cases = {
        "arch": (lambda m: m.update(architecture="ResNet"), "unknown architecture 'ResNet'"),
        "version": (lambda m: m.update(format_version=99), "format version 99 is not supported"),
        "norm": (lambda m: m["normalisation"].update(mean=[0.0]), "1 means and 7 stds for 7 channels"),
        "chan": (lambda m: m.update(channels=["a"]), "differ from channels"),
        "width": (lambda m: m["hyperparameters"].update(base_width=8), "tensor shapes do not match"),
        "hp": (lambda m: m["hyperparameters"].update(bogus=1), "do not build a EnhancedUNet"),
    }
    for name, (edit, msg) in cases.items():
        bad = _rewrite(path, tmp_path / f"{name}.safetensors", edit)
        with pytest.raises(CheckpointError, match=msg):
            load_checkpoint(bad)
    bad = _rewrite(path, tmp_path / "missing.safetensors", state_edit=lambda s: s.pop("head.bias"))
    with pytest.raises(CheckpointError, match=r"missing \['head.bias'\]"):
        load_checkpoint(bad)


def test_wrong_channels_raise_checkpoint_error(ckpt):
    path, _ = ckpt
    pred = Predictor.from_checkpoint(path, device="cpu")
    pred.check_channels(DEFAULT_CHANNELS)
    with pytest.raises(CheckpointError, match=r"missing \['lsi'\]"):
        pred.check_channels(DEFAULT_CHANNELS[:-1])
    with pytest.raises(CheckpointError, match=r"extra \['twi'\]"):
        pred.check_channels([*DEFAULT_CHANNELS, "twi"])
    with pytest.raises(CheckpointError, match="different order"):
        pred.check_channels(DEFAULT_CHANNELS[::-1])
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(path, expected_channels=["slope", "dem"])


def test_predictor_numpy_in_numpy_out(ckpt):
    path, model = ckpt
    pred = Predictor.from_checkpoint(path)  # auto device
    assert pred.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert pred.halo == model.halo() and pred.checkpoint_sha256 == sha256(path)
    rng = np.random.default_rng(0)
    batch = rng.normal(3, 2, (3, 7, 33, 40)).astype(np.float32)
    batch[0, :, 0, 0] = np.nan
    out = pred(batch)
    assert out.shape == (3, 33, 40) and out.dtype == np.float32
    assert np.isfinite(out).all() and (out >= 0).all() and (out <= 1).all()
    with torch.inference_mode():
        ref = torch.sigmoid(landslide_logit(model(torch.from_numpy(normalise(batch.copy(), STATS)))))
    np.testing.assert_allclose(out, ref.numpy(), atol=1e-5 if pred.device.type == "cpu" else 2e-2)
    # chunking into batches does not change results
    pred.batch_size = 1
    np.testing.assert_allclose(pred(batch), out, atol=1e-5)
    with pytest.raises(ValueError, match=r"expected a batch \(N, 7, H, W\)"):
        pred(batch[:, :6])


def test_unet_checkpoint_two_classes(tmp_path):
    model = UNet(channels=("a", "b"), num_classes=2, base_width=4, depth=2).eval()
    path = save_checkpoint(tmp_path / "m.safetensors", model, NormStats((0.0, 0.0), (1.0, 1.0)))
    meta = read_metadata(path)
    assert meta.architecture == "UNet" and meta.hyperparameters["num_classes"] == 2
    out = Predictor.from_checkpoint(path, device="cpu")(np.zeros((1, 2, 8, 8), np.float32))
    assert out.shape == (1, 8, 8)


def _checkpoints_by_header_residue(root):
    """Checkpoints whose safetensors header length covers every residue mod 256 (header
    lengths are multiples of 8, so 32 residues), by padding the provenance."""
    torch.manual_seed(0)
    model = EnhancedUNet(base_width=4, depth=2).eval()
    found = {}
    for pad in range(256 + 8):
        path = save_checkpoint(root / f"m{pad}.safetensors", model, STATS, provenance={"pad": "x" * pad})
        residue = int.from_bytes(path.read_bytes()[:8], "little") % 256
        if residue in found:
            path.unlink()
        else:
            found[residue] = path
        if len(found) == 32:
            break
    return found


def test_every_header_length_mod_256_loads(tmp_path):
    """Issue 15 item 3: a header length ≡ 128 (mod 256) starts the file with 0x80, the
    pickle opcode PROTO; a valid safetensors file must never be refused as a pickle."""
    found = _checkpoints_by_header_residue(tmp_path)
    assert sorted(found) == list(range(0, 256, 8))
    assert found[128].read_bytes()[:1] == b"\x80"
    for residue, path in sorted(found.items()):
        model, meta = load_checkpoint(path)
        assert meta.channels == DEFAULT_CHANNELS and not model.training, residue
        assert set(meta.provenance) == {"pad"}, residue


def _with_header(path, header: dict, body: bytes = b""):
    raw = json.dumps(header).encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + body)
    return path


def test_malformed_headers_are_one_checkpoint_error(ckpt, tmp_path):
    """Headers that safetensors refuses are CheckpointErrors with a fix, never a traceback;
    a file that only starts like a pickle (0x80, no protocol byte) is not called one."""
    cases = {
        "meta_object": ({"__metadata__": {"slidewatch": {"format": "x"}}}, "corrupt safetensors header"),
        "meta_string": ({"__metadata__": "slidewatch"}, "corrupt safetensors header"),
        "past_end": ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, "corrupt or truncated"),
    }
    for name, (header, msg) in cases.items():
        bad = _with_header(tmp_path / f"{name}.safetensors", header)
        with pytest.raises(CheckpointError, match=f"{name}.safetensors.*{msg}.*Fix:"):
            read_metadata(bad)
    path, _ = ckpt
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="corrupt or truncated safetensors file"):
        load_checkpoint(truncated)
    fake = tmp_path / "fake.safetensors"
    fake.write_bytes(b"\x80\x00" + b"\x00" * 30)
    with pytest.raises(CheckpointError, match="bad header length 128") as err:
        load_checkpoint(fake)
    assert "pickle" not in str(err.value)


def test_predictor_refuses_a_bad_batch_with_a_fix(ckpt):
    pred = Predictor.from_checkpoint(ckpt[0], device="cpu")
    with pytest.raises(InputDataError, match=r"got shape \(2, 7, 8\)\..*Fix: pass raw factor chips"):
        pred(np.zeros((2, 7, 8), np.float32))
