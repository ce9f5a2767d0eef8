"""Segmentation networks in plain torch: the enhanced U-Net and a plain U-Net baseline.

Both networks share one interface:

* input ``(N, C, H, W)`` float32, channels in the order of ``channels`` (default
  :data:`DEFAULT_CHANNELS`: the six factors plus the LSI);
* output ``(N, num_classes, H, W)`` raw scores. ``num_classes=1`` (the default) is one
  landslide logit per pixel (probability = ``sigmoid``); ``num_classes=2`` gives the
  paper's two-class head (background, landslide) whose softmax landslide probability
  equals ``sigmoid(logit[1] - logit[0])``. :func:`landslide_logit` turns either head into
  one logit map, and everything downstream (losses, Predictor) works on that map;
* any ``H``, ``W``: inputs are padded internally (reflect, or replicate where the input is
  too small to reflect) to a multiple of ``2**depth`` and the output is cropped back, so
  ``output.shape[-2:] == input.shape[-2:]`` always;
* :meth:`receptive_field` (theoretical, in input pixels, an upper bound over all paths)
  and :meth:`halo` (= half of it, rounded up) for seam-free chunked inference. Note the
  enhanced network's channel attention pools globally over the whole input window, so its
  output also depends weakly on everything in the window; blend overlapping windows of a
  fixed size to keep mosaics seam-free.

Default size: ``base_width=16, depth=4`` (widths 16-32-64-128, bottleneck 256): the
enhanced U-Net has 3,145,078 parameters and the plain U-Net 1,943,153 (7 channels,
one logit), against the paper's ~15 M; ``base_width=32`` gives the enhanced network
12.6 M, close to the paper. The smaller default is chosen for CPU training and inference.
Theoretical receptive field at depth 4: 448 px enhanced (halo 224), 200 px plain (halo
100); the effective receptive field is much smaller.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

DEFAULT_CHANNELS: tuple[str, ...] = ("slope", "dem", "ndvi", "ndwi", "smi", "ndbi", "lsi")

__all__ = [
    "DEFAULT_CHANNELS",
    "ARCHITECTURES",
    "ChannelAttention",
    "EnhancedUNet",
    "HybridConv2d",
    "MultiChannelSpatialAttention",
    "SpatialAttention",
    "UNet",
    "build_model",
    "count_parameters",
    "landslide_logit",
]


def landslide_logit(output: torch.Tensor) -> torch.Tensor:
    """One landslide logit per pixel ``(N, H, W)`` from a 1- or 2-class head."""
    if output.shape[1] == 1:
        return output[:, 0]
    if output.shape[1] == 2:
        return output[:, 1] - output[:, 0]
    raise ValueError(f"expected 1 or 2 output classes, got {output.shape[1]}")


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


class HybridConv2d(nn.Module):
    """``a·conv3x3(x) + b·conv3x3_dilated(x, dilation=2)``, same spatial size.

    The dilated branch widens the receptive field (5×5 footprint) at the cost of a 3×3
    kernel; the standard branch keeps fine detail. ``a`` and ``b`` are fixed mixing
    weights (0.5/0.5 in the paper).
    """

    def __init__(self, in_ch: int, out_ch: int, a: float = 0.5, b: float = 0.5) -> None:
        super().__init__()
        self.a = float(a)
        self.b = float(b)
        self.standard = nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False)
        self.dilated = nn.Conv2d(in_ch, out_ch, 3, padding=2, dilation=2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a * self.standard(x) + self.b * self.dilated(x)


class ChannelAttention(nn.Module):
    """Channel attention: global avg- and max-pool → shared MLP → sum → sigmoid."""

    def __init__(self, channels: int, reduction: int = 8) -> None:
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=True),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1, bias=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = F.adaptive_avg_pool2d(x, 1)
        mx = F.adaptive_max_pool2d(x, 1)
        return torch.sigmoid(self.mlp(avg) + self.mlp(mx))


class SpatialAttention(nn.Module):
    """Spatial attention: channel-mean and channel-max maps → conv → ReLU → conv → sigmoid."""

    def __init__(self, kernel_size: int = 3, hidden: int = 8) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"spatial attention kernel must be odd, got {kernel_size}")
        pad = kernel_size // 2
        self.kernel_size = kernel_size
        self.body = nn.Sequential(
            nn.Conv2d(2, hidden, kernel_size, padding=pad, bias=True),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, 1, kernel_size, padding=pad, bias=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.body(pooled))


class MultiChannelSpatialAttention(nn.Module):
    """Multi-channel spatial attention: ``x · CA(x)`` then ``· SA(x · CA(x))`` (sequential)."""

    def __init__(self, channels: int, reduction: int = 8, kernel_size: int = 3) -> None:
        super().__init__()
        self.channel = ChannelAttention(channels, reduction)
        self.spatial = SpatialAttention(kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * self.channel(x)
        return x * self.spatial(x)


class _ConvBlock(nn.Module):
    """Two (conv → BatchNorm → ReLU); hybrid or standard convolutions."""

    def __init__(self, in_ch: int, out_ch: int, hybrid: bool, a: float, b: float) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(2):
            c_in = in_ch if i == 0 else out_ch
            if hybrid:
                layers.append(HybridConv2d(c_in, out_ch, a, b))
            else:
                layers.append(nn.Conv2d(c_in, out_ch, 3, padding=1, bias=False))
            layers += [nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)]
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class _UNetBase(nn.Module):
    """Shared U-Net skeleton. Subclasses choose hybrid convolutions and attention."""

    architecture: str = ""
    _hybrid: bool = False
    _attention: bool = False

    def __init__(
        self,
        channels: Sequence[str] = DEFAULT_CHANNELS,
        num_classes: int = 1,
        base_width: int = 16,
        depth: int = 4,
        *,
        hybrid_a: float = 0.5,
        hybrid_b: float = 0.5,
        attention_reduction: int = 8,
        attention_kernel: int = 3,
    ) -> None:
        super().__init__()
        channels = tuple(str(c) for c in channels)
        if not channels:
            raise ValueError("a network needs at least one input channel")
        if len(set(channels)) != len(channels):
            raise ValueError(f"duplicate channel names in {channels}")
        if num_classes not in (1, 2):
            raise ValueError(f"num_classes must be 1 (one logit) or 2, got {num_classes}")
        if depth < 1 or base_width < 1:
            raise ValueError(f"depth and base_width must be >= 1, got {depth}, {base_width}")
        self.channels = channels
        self.num_classes = int(num_classes)
        self.base_width = int(base_width)
        self.depth = int(depth)
        self.hybrid_a = float(hybrid_a)
        self.hybrid_b = float(hybrid_b)
        self.attention_reduction = int(attention_reduction)
        self.attention_kernel = int(attention_kernel)

        widths = [base_width * 2**i for i in range(depth + 1)]
        self.encoders = nn.ModuleList()
        self.enc_attention = nn.ModuleList()
        c_in = len(channels)
        for w in widths[:-1]:
            self.encoders.append(_ConvBlock(c_in, w, self._hybrid, hybrid_a, hybrid_b))
            self.enc_attention.append(self._make_attention(w))
            c_in = w
        self.bottleneck = _ConvBlock(c_in, widths[-1], self._hybrid, hybrid_a, hybrid_b)
        self.bottleneck_attention = self._make_attention(widths[-1])
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for w_low, w in zip(widths[:0:-1], widths[-2::-1]):
            self.ups.append(nn.ConvTranspose2d(w_low, w, 2, stride=2))
            self.decoders.append(_ConvBlock(2 * w, w, False, 1.0, 0.0))
        self.head = nn.Conv2d(widths[0], num_classes, 1)

    def _make_attention(self, width: int) -> nn.Module:
        if self._attention:
            return MultiChannelSpatialAttention(
                width, self.attention_reduction, self.attention_kernel
            )
        return nn.Identity()

    # -- description -----------------------------------------------------------------
    def config(self) -> dict:
        """JSON-able hyper-parameters; ``build_model(self.architecture, **config)`` rebuilds."""
        return {
            "channels": list(self.channels),
            "num_classes": self.num_classes,
            "base_width": self.base_width,
            "depth": self.depth,
            "hybrid_a": self.hybrid_a,
            "hybrid_b": self.hybrid_b,
            "attention_reduction": self.attention_reduction,
            "attention_kernel": self.attention_kernel,
        }

    @property
    def size_multiple(self) -> int:
        """Inputs are padded internally to a multiple of this (``2**depth``)."""
        return 2**self.depth

    def receptive_field(self) -> int:
        """Theoretical receptive field in input pixels (upper bound over all paths).

        Sums each layer's footprint growth ``(k_eff - 1) · stride_so_far`` along the
        encoder, the bottleneck and the decoder: a 3×3 conv adds 2, a hybrid conv 4
        (its dilated branch spans 5×5), spatial attention 2·(k-1), a 2×2 max-pool 1;
        the 2×2 stride-2 transposed convolutions add nothing. Channel attention's global
        pooling is not counted (see the module docstring).
        """
        conv = 4 if self._hybrid else 2
        sa = 2 * (self.attention_kernel - 1) if self._attention else 0
        rf = 1
        for s in range(self.depth):  # encoder stage at scale 2**s, then pool
            rf += (2 * conv + sa + 1) * 2**s
        rf += (2 * conv + sa) * 2**self.depth  # bottleneck
        for s in range(self.depth):  # decoder blocks: two standard 3×3 convs
            rf += 2 * 2 * 2**s
        return rf

    def halo(self) -> int:
        """Half the receptive field, rounded up: the overlap for seam-free chunking."""
        return math.ceil(self.receptive_field() / 2)

    # -- forward ---------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != len(self.channels):
            raise ValueError(
                f"expected input (N, {len(self.channels)}, H, W) for channels "
                f"{list(self.channels)}, got {tuple(x.shape)}"
            )
        h, w = x.shape[-2:]
        m = self.size_multiple
        ph, pw = (-h) % m, (-w) % m
        if ph or pw:
            mode = "reflect" if (ph < h and pw < w) else "replicate"
            x = F.pad(x, (0, pw, 0, ph), mode=mode)
        skips = []
        for enc, att in zip(self.encoders, self.enc_attention):
            x = att(enc(x))
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.bottleneck_attention(self.bottleneck(x))
        for up, dec, skip in zip(self.ups, self.decoders, reversed(skips)):
            x = dec(torch.cat([up(x), skip], dim=1))
        out = self.head(x)
        return out[..., :h, :w]


class EnhancedUNet(_UNetBase):
    """U-Net with hybrid (standard + dilated) encoder convolutions and multi-channel
    spatial attention on every encoder stage and the bottleneck.

    Args:
        channels: input channel names, in order (default the six factors + LSI).
        num_classes: 1 (one logit, default) or 2 (background/landslide scores).
        base_width: width of the first stage; doubles at every level.
        depth: number of 2× down-samplings (inputs padded to a multiple of ``2**depth``).
        hybrid_a, hybrid_b: weights of the standard and dilated branches.
        attention_reduction: channel-attention MLP reduction ratio.
        attention_kernel: spatial-attention conv kernel size (odd).
    """

    architecture = "EnhancedUNet"
    _hybrid = True
    _attention = True


class UNet(_UNetBase):
    """Plain U-Net baseline (standard 3×3 convolutions, no attention), same interface."""

    architecture = "UNet"
    _hybrid = False
    _attention = False


ARCHITECTURES: dict[str, type[_UNetBase]] = {"EnhancedUNet": EnhancedUNet, "UNet": UNet}
_ALIASES = {"enhanced": "EnhancedUNet", "unet": "UNet"}


def build_model(architecture: str, **params) -> _UNetBase:
    """Build a network by name (``EnhancedUNet``/``enhanced`` or ``UNet``/``unet``)."""
    name = _ALIASES.get(architecture.lower(), architecture) if architecture else architecture
    try:
        cls = ARCHITECTURES[name]
    except KeyError:
        raise ValueError(
            f"unknown architecture {architecture!r}; choose one of {sorted(ARCHITECTURES)}"
        ) from None
    return cls(**params)
