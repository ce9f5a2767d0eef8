"""The library's public face: ``pipeline.__all__`` resolves, and ``import pipeline`` is cheap."""

from __future__ import annotations

import subprocess
import sys

import pytest

import pipeline


@pytest.mark.parametrize("name", sorted(set(pipeline.__all__) - {"__version__"}))
def test_every_public_name_resolves_to_its_home(name: str) -> None:
    value = getattr(pipeline, name)
    home = pipeline._EXPORTS[name]
    assert getattr(sys.modules[home], name) is value
    assert name in dir(pipeline)


def test_unknown_names_raise_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        pipeline.nope  # noqa: B018


def test_import_pipeline_loads_no_stage_module() -> None:
    code = "import sys, pipeline; print(sorted(m for m in sys.modules if m.startswith(('pipeline.', 'stackstac', 'rasterio', 'xarray'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
