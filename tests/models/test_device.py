"""Devices for inference: the ``--device`` vocabulary (``gpu`` an alias of ``cuda``, anything
else one line, exit 2), CUDA refused in one line where there is none, the checkpoint loaded
once per process however many threads ask, and, on a machine with CUDA, the Predictor in
bfloat16/float16 autocast with a batch sized from free memory, and the risk stage on the GPU
(skipped cleanly without CUDA)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from typer.testing import CliRunner

from flows.cli import app
from flows.stages.inference_workers import parse_device
from pipeline.core.errors import CheckpointError, InputDataError

torch = pytest.importorskip("torch")
CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (tests/benchmarks/gpu_check.sh runs these)")
RUN = ["run", "--region", "demo", "--start", "2024-07-01", "--end", "2024-08-31"]


def _checkpoint(path, seed: int = 0):  # type: ignore[no-untyped-def]
    from models.checkpoint import save_checkpoint
    from models.data import NormStats
    from models.networks import DEFAULT_CHANNELS, EnhancedUNet

    torch.manual_seed(seed)
    return save_checkpoint(path, EnhancedUNet(DEFAULT_CHANNELS, base_width=4, depth=2),
                           NormStats((0.0,) * 7, (1.0,) * 7))


@pytest.mark.parametrize(("given", "want"), [("auto", "auto"), ("cpu", "cpu"), ("cuda", "cuda"), ("gpu", "cuda"),
                                             ("GPU", "cuda"), (" Cuda ", "cuda"), ("gpu:1", "cuda:1"),
                                             ("cuda:0", "cuda:0")])
def test_device_names(given: str, want: str) -> None:
    assert parse_device(given) == want


@pytest.mark.parametrize("given", ["tpu", "mps", "cuda:x", "cpu:0", "", "auto:1"])
def test_unknown_device_is_one_line_with_a_fix(given: str) -> None:
    with pytest.raises(InputDataError) as info:
        parse_device(given)
    assert "\n" not in str(info.value) and "Fix:" in str(info.value) and repr(given) in str(info.value)


def test_cli_refuses_an_unknown_device_before_any_work(tmp_path) -> None:  # type: ignore[no-untyped-def]
    res = CliRunner().invoke(app, [*RUN, "--out", str(tmp_path / "out"), "--device", "tpu"])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and "'tpu'" in res.output and "Fix:" in res.output
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(CUDA, reason="this machine has CUDA: --device gpu is accepted")
def test_cli_device_gpu_without_cuda_is_one_line_before_the_cube(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import pipeline.acquire.catalog

    def no_catalog(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("the STAC API was opened before the device was checked")

    monkeypatch.setattr(pipeline.acquire.catalog.StacApiSource, "open", classmethod(no_catalog))
    ckpt = _checkpoint(tmp_path / "m.safetensors")
    res = CliRunner().invoke(app, [*RUN, "--out", str(tmp_path / "out"), "--checkpoint", str(ckpt),
                                   "--device", "gpu", "--dask-address", "threads"])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and "--device cuda" in res.output and "Fix:" in res.output
    assert len([line for line in res.output.splitlines() if line.strip()]) <= 3  # one message (wrapped)
    assert not (tmp_path / "out").exists()  # refused before anything is written


@pytest.mark.skipif(CUDA, reason="this machine has CUDA")
def test_cuda_without_cuda_is_refused_in_one_line(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from models.predictor import Predictor, resolve_device

    with pytest.raises(InputDataError, match="Fix:"):
        resolve_device("cuda")
    with pytest.raises(InputDataError, match="Fix:"):
        Predictor.from_checkpoint(_checkpoint(tmp_path / "m.safetensors"), device="cuda")
    with pytest.raises(InputDataError, match="not a torch device"):
        resolve_device("gpu")  # the alias is the CLI's (flows.stages.inference_workers.parse_device)


def test_cpu_predictor_stays_float32_with_its_batch(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from models.predictor import Predictor

    pred = Predictor.from_checkpoint(_checkpoint(tmp_path / "m.safetensors"), device="cpu", batch_size=5)
    assert pred.precision == "float32" and not pred.amp and pred.device_label == "cpu (float32)"
    assert pred.batch_for(256) == 5 and pred.requested_device == "cpu"
    assert pred.checkpoint_path == str((tmp_path / "m.safetensors").resolve())


def test_checkpoint_loaded_once_per_process_by_concurrent_threads(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from models.predictor import cached_predictor, load_count

    ckpt = _checkpoint(tmp_path / "m.safetensors")
    before = load_count()
    got: list[object] = []
    barrier = threading.Barrier(4)

    def ask() -> None:
        barrier.wait()
        got.append(cached_predictor(str(ckpt), "cpu", 8))

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert load_count() - before == 1
    assert len(got) == 4 and all(p is got[0] for p in got)
    sha = got[0].checkpoint_sha256  # type: ignore[attr-defined]
    assert cached_predictor(str(ckpt), "cpu", 8, expected_sha256=sha) is got[0]
    with pytest.raises(CheckpointError, match="not the checkpoint this run started with"):
        cached_predictor(str(ckpt), "cpu", 8, expected_sha256="0" * 64)


# ------------------------------------------------------------------------------ CUDA only


@needs_cuda
def test_cuda_predictor_autocasts_and_sizes_its_batch(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from models.predictor import MAX_CUDA_BATCH, Predictor

    ckpt = _checkpoint(tmp_path / "m.safetensors")
    gpu = Predictor.from_checkpoint(ckpt, device="auto")
    cpu = Predictor.from_checkpoint(ckpt, device="cpu")
    want = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    assert gpu.device.type == "cuda" and gpu.precision == want and gpu.amp
    assert gpu.device_label.startswith("cuda:") and want in gpu.device_label
    batch = gpu.batch_for(256)
    assert 1 <= batch <= MAX_CUDA_BATCH and gpu.batch_for(256) == batch  # measured once per shape
    x = np.random.default_rng(0).normal(size=(3, 7, 128, 128)).astype(np.float32)
    a, b = gpu(x), cpu(x)
    assert a.dtype == np.float32 and a.shape == (3, 128, 128)
    np.testing.assert_allclose(a, b, atol=2e-2)  # reduced precision, same model


@needs_cuda
def test_risk_stage_on_cuda_matches_the_cpu(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from flows.stages.risk import write_risk
    from models.predictor import Predictor
    from tests.flows.test_distributed_risk import tiny_lsi

    grid, lsi_path = tiny_lsi(tmp_path)
    ckpt = _checkpoint(tmp_path / "m.safetensors")
    out = {}
    for device in ("cpu", "cuda"):
        res = write_risk(tmp_path / device, [(grid, lsi_path)], Predictor.from_checkpoint(ckpt, device=device),
                         region="tiny", tile=32)
        assert len(res.devices) == 1 and next(iter(res.devices)).startswith(device)
        import xarray as xr

        zone = xr.open_zarr(tmp_path / device / "risk.zarr", group=grid.zone_name, consolidated=False)
        assert zone.attrs["inference_device"].startswith(device)
        out[device] = zone["susceptibility"].values
    assert np.array_equal(np.isnan(out["cpu"]), np.isnan(out["cuda"]))
    np.testing.assert_allclose(out["cuda"], out["cpu"], atol=2e-2, equal_nan=True)
