"""Networks: shapes, odd sizes, gradients, over-fitting, receptive field."""

from __future__ import annotations

import pytest
import torch

from models.losses import DiceBCELoss
from models.networks import (
    DEFAULT_CHANNELS,
    ChannelAttention,
    EnhancedUNet,
    HybridConv2d,
    UNet,
    build_model,
    count_parameters,
    landslide_logit,
)
from models_testdata import torch_threads  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("torch_threads")

ARCHS = [EnhancedUNet, UNet]


@pytest.mark.parametrize("cls", ARCHS)
def test_forward_default_model_on_64px(cls):
    torch.manual_seed(0)
    model = cls().eval()
    assert model.channels == DEFAULT_CHANNELS
    with torch.inference_mode():
        out = model(torch.randn(1, 7, 64, 64))
    assert out.shape == (1, 1, 64, 64)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("cls", ARCHS)
@pytest.mark.parametrize("shape", [(61, 67), (5, 9), (1, 1), (130, 128)])
def test_odd_sizes_are_padded_and_cropped(cls, shape):
    torch.manual_seed(0)
    model = cls(base_width=4, depth=3).eval()
    with torch.inference_mode():
        out = model(torch.randn(2, 7, *shape))
    assert out.shape == (2, 1, *shape)
    assert torch.isfinite(out).all()


def test_two_class_head_and_logit():
    model = EnhancedUNet(num_classes=2, base_width=4, depth=2).eval()
    out = model(torch.randn(1, 7, 32, 32))
    assert out.shape == (1, 2, 32, 32)
    assert torch.allclose(landslide_logit(out), out[:, 1] - out[:, 0])
    with pytest.raises(ValueError):
        EnhancedUNet(num_classes=3)


def test_any_channel_list_and_wrong_input():
    model = UNet(channels=("a", "b"), base_width=4, depth=2)
    assert model(torch.randn(1, 2, 16, 16)).shape == (1, 1, 16, 16)
    with pytest.raises(ValueError, match=r"expected input \(N, 2, H, W\)"):
        model(torch.randn(1, 7, 16, 16))
    with pytest.raises(ValueError, match="duplicate"):
        UNet(channels=("a", "a"))


def test_hybrid_conv_is_weighted_sum():
    torch.manual_seed(0)
    hc = HybridConv2d(3, 4, a=0.3, b=0.7)
    x = torch.randn(1, 3, 12, 12)
    expect = 0.3 * hc.standard(x) + 0.7 * hc.dilated(x)
    assert torch.allclose(hc(x), expect)
    assert hc.dilated.dilation == (2, 2)


@pytest.mark.parametrize("cls", ARCHS)
def test_gradients_reach_every_parameter(cls):
    torch.manual_seed(0)
    model = cls(base_width=8, depth=2).train()
    out = model(torch.randn(2, 7, 32, 32))
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


@pytest.mark.parametrize("cls", ARCHS)
def test_tiny_batch_can_be_overfitted(cls):
    torch.manual_seed(0)
    model = cls(base_width=4, depth=2).train()
    x = torch.randn(2, 7, 32, 32)
    y = torch.zeros(2, 32, 32)
    y[:, 8:20, 10:24] = 1.0
    x[:, 0] += 2 * y  # a learnable cue
    loss_fn = DiceBCELoss()
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    losses = []
    for _ in range(40):
        opt.zero_grad()
        loss = loss_fn(landslide_logit(model(x)), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0], losses[::8]


def _gradient_extent(model, size):
    model.eval()
    x = torch.randn(1, len(model.channels), size, size, requires_grad=True)
    model(x)[0, 0, size // 2, size // 2].backward()
    g = x.grad.abs().sum((0, 1)) > 0
    rows = torch.nonzero(g.any(1)).flatten()
    cols = torch.nonzero(g.any(0)).flatten()
    return int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)


@pytest.mark.parametrize("cls", ARCHS)
def test_receptive_field_bounds_the_measured_footprint(cls, monkeypatch):
    torch.manual_seed(0)
    model = cls(base_width=4, depth=2)
    # channel attention pools globally (documented); take it out to measure the local path
    monkeypatch.setattr(ChannelAttention, "forward", lambda self, x: torch.ones_like(x[:, :, :1, :1]))
    rf = model.receptive_field()
    ext = _gradient_extent(model, 4 * rf // 2 * 2)
    assert max(ext) <= rf
    assert min(ext) >= rf // 2
    assert model.halo() == -(-rf // 2)


def test_default_sizes_are_documented():
    assert count_parameters(EnhancedUNet()) == 3_145_078
    assert count_parameters(UNet()) == 1_943_153
    assert EnhancedUNet().receptive_field() == 448
    assert UNet().halo() == 100


def test_build_model_by_name_and_config_round_trip():
    m = build_model("enhanced", base_width=4, depth=2)
    assert isinstance(m, EnhancedUNet)
    m2 = build_model(m.architecture, **m.config())
    assert m2.config() == m.config()
    with pytest.raises(ValueError, match="unknown architecture"):
        build_model("resnet")
