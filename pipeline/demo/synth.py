"""Seeded synthesis of a physically plausible mountain scene (numpy only).

Terrain is spectral (fractal) noise with carved river valleys; land cover follows
elevation, slope and distance to rivers; soil wetness follows valleys and concavity;
landslide scars are planted on steep, wet slopes, elongated downslope.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

WATER, FOREST, FIELDS, SETTLEMENT, ROCK, SCAR, GRASS = range(7)
CLASS_NAMES = ("water", "forest", "fields", "settlement", "bare rock", "landslide scar", "grassland")

#: Surface reflectance per class for B01 B02 B03 B04 B05 B06 B07 B08 B8A B09 B11 B12.
S2_ORDER = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")
SPECTRA = np.array([
    [0.060, 0.050, 0.060, 0.040, 0.030, 0.020, 0.020, 0.015, 0.012, 0.005, 0.008, 0.005],  # water
    [0.030, 0.030, 0.050, 0.030, 0.080, 0.220, 0.270, 0.300, 0.310, 0.100, 0.150, 0.070],  # forest
    [0.050, 0.050, 0.080, 0.070, 0.140, 0.250, 0.290, 0.320, 0.330, 0.110, 0.240, 0.140],  # fields
    [0.100, 0.110, 0.130, 0.150, 0.170, 0.190, 0.200, 0.210, 0.220, 0.080, 0.260, 0.220],  # settlement
    [0.120, 0.130, 0.160, 0.190, 0.210, 0.230, 0.240, 0.250, 0.260, 0.090, 0.300, 0.250],  # rock
    [0.090, 0.100, 0.130, 0.170, 0.190, 0.210, 0.220, 0.230, 0.240, 0.090, 0.310, 0.260],  # scar
    [0.040, 0.040, 0.070, 0.060, 0.120, 0.220, 0.250, 0.270, 0.280, 0.100, 0.220, 0.120],  # grass
], dtype="float32")
#: VV backscatter (dB) of each class at medium soil moisture, and its sensitivity (dB per unit wetness).
VV_BASE_DB = np.array([-21.0, -8.0, -11.0, -5.0, -9.5, -12.5, -10.5], dtype="float32")
VV_MOISTURE_DB = np.array([0.0, 2.0, 7.0, 1.0, 3.0, 8.0, 6.0], dtype="float32")
VH_MINUS_VV_DB = np.array([-10.0, -6.0, -7.5, -7.0, -8.0, -8.0, -7.0], dtype="float32")


@dataclass
class Scene:
    """The synthetic truth on the 10 m UTM synthesis grid."""

    elevation: np.ndarray  # m, float32
    slope: np.ndarray  # degrees
    aspect: np.ndarray  # radians, downslope direction (0 = north, clockwise)
    landcover: np.ndarray  # uint8 class codes
    wetness: np.ndarray  # 0..1, static soil-wetness propensity
    scars: np.ndarray  # bool, planted landslide scars
    river_distance: np.ndarray  # m


def fractal_noise(rng: np.random.Generator, shape: tuple[int, int], beta: float, cutoff: float = 1.0) -> np.ndarray:
    """Zero-mean, unit-std noise with power spectrum ∝ k^-beta (k in cycles per pixel × size)."""
    h, w = shape
    ky = np.fft.fftfreq(h)[:, None]
    kx = np.fft.rfftfreq(w)[None, :]
    k = np.sqrt(kx**2 + ky**2) * max(h, w)
    k[0, 0] = 1.0
    amp = np.maximum(k, cutoff) ** (-beta / 2.0)
    amp[0, 0] = 0.0
    phase = rng.standard_normal((h, w // 2 + 1)) + 1j * rng.standard_normal((h, w // 2 + 1))
    field = np.fft.irfft2(phase * amp, s=shape)
    field = (field - field.mean()) / field.std()
    return field.astype("float32")


def _rivers(rng: np.random.Generator, shape: tuple[int, int], res: float) -> np.ndarray:
    """Distance (m) to two sinuous rivers: a trunk crossing west→east and a tributary."""
    h, w = shape
    mask = np.zeros(shape, dtype=bool)
    xs = np.arange(w)
    amp, period, phase = h * 0.12, w * rng.uniform(0.6, 0.9), rng.uniform(0, 2 * np.pi)
    ys = (h * 0.55 + amp * np.sin(2 * np.pi * xs / period + phase)).astype(int).clip(0, h - 1)
    mask[ys, xs] = True
    # tributary joining from the north
    x_join = int(w * rng.uniform(0.35, 0.65))
    yr = np.arange(0, ys[x_join])
    xr_ = (x_join + w * 0.06 * np.sin(2 * np.pi * yr / (h * 0.4))).astype(int).clip(0, w - 1)
    mask[yr, xr_] = True
    return ndimage.distance_transform_edt(~mask).astype("float32") * res


def _slope_aspect(z: np.ndarray, res: float) -> tuple[np.ndarray, np.ndarray]:
    dzdy, dzdx = np.gradient(z, res)
    slope = np.degrees(np.arctan(np.hypot(dzdx, dzdy))).astype("float32")
    # rows go south, so north-up dz/dnorth = -dzdy; downslope direction = -gradient
    aspect = np.arctan2(-dzdx, dzdy).astype("float32") % (2 * np.pi)
    return slope, aspect


def synthesize_scene(seed: int, shape: tuple[int, int], res: float = 10.0) -> Scene:
    """Terrain, land cover, wetness and planted scars for a ``shape`` grid of ``res`` m pixels."""
    rng = np.random.default_rng(seed)
    h, w = shape
    base = fractal_noise(rng, shape, beta=3.6, cutoff=2.0)
    ridges = 1.0 - np.abs(fractal_noise(rng, shape, beta=3.2, cutoff=3.0))
    relief = 520.0 * base + 260.0 * ridges
    gy, gx = np.gradient(relief, res)
    relief *= 0.42 / float(np.median(np.hypot(gx, gy)))  # median gradient ≈ tan(23°)
    z = 1500.0 + relief
    dist = _rivers(rng, shape, res)
    z -= 450.0 * np.exp(-((dist / 1600.0) ** 2))  # broad valleys
    z -= 40.0 * np.exp(-((dist / 60.0) ** 2))  # incised channels
    # gentle terraces on valley floors where people farm and live
    floor = dist < 500.0
    z[floor] = ndimage.uniform_filter(z, size=25)[floor]
    z = ndimage.gaussian_filter(z, 1.0).astype("float32")
    slope, aspect = _slope_aspect(z, res)

    smooth = ndimage.gaussian_filter(z, 20.0)
    concavity = np.clip((smooth - z) / 60.0, -1.0, 1.0)
    wet = 0.25 + 0.45 * np.exp(-dist / 900.0) + 0.25 * concavity
    wet += 0.08 * fractal_noise(rng, shape, beta=3.0, cutoff=4.0)
    wet = np.clip(wet, 0.0, 1.0).astype("float32")

    lc = np.full(shape, FOREST, dtype="uint8")
    patch = fractal_noise(rng, shape, beta=3.0, cutoff=6.0)
    lc[(z > np.quantile(z, 0.75)) & (slope < 30) & (patch > 0.2)] = GRASS
    lc[(slope < 14) & (dist < 2500) & (patch > -0.4)] = FIELDS
    town = fractal_noise(rng, shape, beta=3.4, cutoff=8.0)
    lc[(slope < 9) & (dist < 700) & (dist > 40) & (town > 0.9)] = SETTLEMENT
    lc[(z > np.quantile(z, 0.97)) | (slope > 52)] = ROCK
    lc[dist < 15.0] = WATER

    scars = _plant_scars(rng, slope, aspect, wet, lc, res)
    lc[scars] = SCAR
    return Scene(z, slope, aspect, lc, wet, scars, dist)


def _plant_scars(
    rng: np.random.Generator, slope: np.ndarray, aspect: np.ndarray, wet: np.ndarray,
    lc: np.ndarray, res: float, n: int = 320,
) -> np.ndarray:
    """Elongated ellipses starting at steep, wet seeds and running downslope."""
    h, w = slope.shape
    weight = np.clip(slope - 25.0, 0, None) * np.clip(wet - 0.35, 0, None)
    weight[(lc == WATER) | (lc == SETTLEMENT)] = 0
    flat = weight.ravel()
    if flat.sum() <= 0:
        return np.zeros(slope.shape, dtype=bool)
    seeds = rng.choice(flat.size, size=n, replace=False, p=flat / flat.sum())
    mask = np.zeros(slope.shape, dtype=bool)
    for s in seeds:
        r, c = divmod(int(s), w)
        length = rng.uniform(40.0, 320.0) / res
        width = rng.uniform(15.0, 70.0) / res
        theta = float(aspect[r, c])  # downslope azimuth
        dr, dc = -np.cos(theta), np.sin(theta)  # row axis points south
        half = int(length) + 2
        r0, r1, c0, c1 = max(r - half, 0), min(r + half + 1, h), max(c - half, 0), min(c + half + 1, w)
        rr, cc = np.mgrid[r0:r1, c0:c1]
        # centre half a length downslope of the seed
        cr, ccen = r + dr * length / 2, c + dc * length / 2
        u = (rr - cr) * dr + (cc - ccen) * dc
        v = -(rr - cr) * dc + (cc - ccen) * dr
        inside = (u / (length / 2)) ** 2 + (v / (width / 2)) ** 2 <= 1.0
        mask[r0:r1, c0:c1] |= inside & (slope[r0:r1, c0:c1] > 18)
    return mask


def hillshade_factor(slope: np.ndarray, aspect: np.ndarray, sun_azimuth: float = 150.0, sun_zenith: float = 30.0) -> np.ndarray:
    """cos(local incidence)/cos(zenith), the illumination term applied to reflectances."""
    s = np.radians(slope)
    az, zen = np.radians(sun_azimuth), np.radians(sun_zenith)
    cos_i = np.cos(zen) * np.cos(s) + np.sin(zen) * np.sin(s) * np.cos(az - aspect)
    return np.clip(cos_i / np.cos(zen), 0.25, 1.5).astype("float32")


def reflectance(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """Cloud-free surface reflectance ``(12, h, w)`` in S2_ORDER."""
    spec = SPECTRA[scene.landcover]  # (h, w, 12)
    refl = np.moveaxis(spec, -1, 0).copy()
    # wetter vegetation/soil: lower SWIR
    refl[10] *= 1.0 - 0.25 * scene.wetness
    refl[11] *= 1.0 - 0.30 * scene.wetness
    refl *= 0.55 + 0.45 * hillshade_factor(scene.slope, scene.aspect)
    refl *= 1.0 + 0.04 * rng.standard_normal(refl.shape[1:], dtype="float32")
    return np.clip(refl, 0.001, 1.0).astype("float32")


def clouds(rng: np.random.Generator, shape: tuple[int, int], fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Cloud optical density 0..1 (0 = clear) and a shadow mask, for a cloud fraction."""
    field = fractal_noise(rng, shape, beta=3.8, cutoff=3.0)
    if fraction <= 0:
        return np.zeros(shape, "float32"), np.zeros(shape, bool)
    thr = np.quantile(field, 1.0 - fraction)
    density = np.clip((field - thr) / 0.6, 0.0, 1.0).astype("float32")
    cloud = density > 0
    shadow = np.roll(cloud, (25, -30), axis=(0, 1)) & ~cloud
    return density, shadow


def soil_moisture(scene: Scene, rain: float, rng: np.random.Generator) -> np.ndarray:
    """Surface soil moisture 0..1 on a date, from static wetness and the recent rain (0..1)."""
    sm = 0.15 + 0.55 * scene.wetness * (0.4 + 0.6 * rain) + 0.05 * rng.standard_normal(scene.wetness.shape, dtype="float32")
    return np.clip(sm, 0.0, 1.0).astype("float32")


def backscatter(scene: Scene, moisture: np.ndarray, rng: np.random.Generator, look_azimuth: float = 280.0) -> tuple[np.ndarray, np.ndarray]:
    """Linear gamma0 VV and VH with terrain, moisture and speckle (ENL 4.4)."""
    lc = scene.landcover
    vv_db = VV_BASE_DB[lc] + VV_MOISTURE_DB[lc] * (moisture - 0.4)
    facing = np.sin(np.radians(scene.slope)) * np.cos(np.radians(look_azimuth) - scene.aspect)
    vv_db += 4.0 * facing
    vh_db = vv_db + VH_MINUS_VV_DB[lc]
    enl = 4.4
    vv = 10 ** (vv_db / 10) * rng.gamma(enl, 1 / enl, size=lc.shape)
    vh = 10 ** (vh_db / 10) * rng.gamma(enl, 1 / enl, size=lc.shape)
    return vv.astype("float32"), vh.astype("float32")
