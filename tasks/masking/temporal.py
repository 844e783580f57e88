"""The temporal maskers `scl+temporal`, `ocm+scl+temporal` and `ocm+temporal`: a masker's own classes, then
a check of each pixel's observations of the month against the pixel's clear background.

A scene's own masker misses what looks like the ground in one image: faint thin cloud over bright soil,
haze, a shadow on dark ground. Over a month the same pixel is seen 5 to 7 times, and those look wrong
against the others. `temporal_check` runs on one composite block's stack (`Masker.stack_check`):

- background: per pixel and band, the `TemporalSettings.background_percentile` of the pixel's usable
  observations (`tasks.compositing.percentile.percentile_composite`, exact);
- cloud: a usable observation whose blue exceeds the background's by more than `cloud_blue_excess` and
  whose mean of red, green and blue exceeds the background's mean by more than `cloud_visible_excess`;
- shadow: a usable observation whose NIR is below `shadow_nir_ratio` x the background's NIR;
- pixels with fewer than `min_observations` usable observations are left as they are.

Reflectance thresholds are in surface reflectance; the stack holds DN = reflectance x 10000
(`tasks.core.scene.REFLECTANCE_SCALE`). The check runs on `MaskSettings.device`. A combined masker has its
base's per-window classes, halo and readiness check, so its scene masks are the base's.
"""

import numpy as np
import torch

from tasks.compositing.percentile import percentile_composite
from tasks.core.device import compute_device
from tasks.core.scene import REFLECTANCE_BANDS, REFLECTANCE_SCALE
from tasks.core.settings import MaskSettings, TemporalSettings
from tasks.masking.registry import Masker, masker_named, register_masker

__all__ = ["TEMPORAL_BASES", "TEMPORAL_SUFFIX", "temporal_check", "temporal_flags", "with_temporal_check"]

TEMPORAL_SUFFIX = "+temporal"
TEMPORAL_BASES: tuple[str, ...] = ("scl", "ocm+scl", "ocm")
"""Built-in maskers that get a `<name>+temporal` variant."""
VISIBLE_BANDS: tuple[str, ...] = ("red", "green", "blue")
CHUNK_OBSERVATIONS = 1 << 22
"""Pixel-observations checked at once: int32 working arrays of 16 MiB each."""


def band(stack: torch.Tensor, name: str) -> torch.Tensor:
    """One band (obs, y, x) or (y, x) of a stack (obs, band, y, x) or a background (band, y, x), as int32 DN."""
    return stack.select(-3, REFLECTANCE_BANDS.index(name)).to(torch.int32)


def visible_sum(stack: torch.Tensor) -> torch.Tensor:
    """Red + green + blue DN, int32 (3 x the visible mean, kept exact)."""
    return sum((band(stack, name) for name in VISIBLE_BANDS), torch.zeros((), dtype=torch.int32))


def temporal_flags(
    stack: torch.Tensor, usable: torch.Tensor, settings: TemporalSettings
) -> tuple[torch.Tensor, torch.Tensor]:
    """(cloud, shadow): (obs, y, x) bool of the usable observations `temporal_check` removes, on the stack's device.

    `stack` (obs, band, y, x) uint16 DN, `usable` (obs, y, x) bool; pixels with fewer than
    `settings.min_observations` usable observations have no flag.
    """
    background, count = percentile_composite(stack, usable, settings.background_percentile)
    checked = usable & (count.to(torch.int32) >= settings.min_observations)
    blue_excess = band(stack, "blue") - band(background, "blue")
    visible_excess = visible_sum(stack) - visible_sum(background)
    cloud = (
        checked
        & (blue_excess > settings.cloud_blue_excess * REFLECTANCE_SCALE)
        & (visible_excess > len(VISIBLE_BANDS) * settings.cloud_visible_excess * REFLECTANCE_SCALE)
    )
    shadow = checked & ~cloud & (band(stack, "nir") < settings.shadow_nir_ratio * band(background, "nir"))
    return cloud, shadow


def temporal_check(settings: MaskSettings, stack: np.ndarray, usable: np.ndarray) -> np.ndarray:
    """`Masker.stack_check`: `usable` less the observations `temporal_flags` finds cloudy or shadowed.

    Runs on strips of rows of at most `CHUNK_OBSERVATIONS` pixel-observations, so its working memory
    (a few int32 arrays of a strip's observations) stays small beside the block's stack.
    """
    device = compute_device(settings.device)
    observations, _, height, width = stack.shape
    kept = usable.copy()
    rows_per_chunk = max(1, CHUNK_OBSERVATIONS // max(1, observations * width))
    for start in range(0, height, rows_per_chunk):
        rows = slice(start, start + rows_per_chunk)
        strip_usable = torch.from_numpy(usable[:, rows]).to(device)
        cloud, shadow = temporal_flags(torch.from_numpy(stack[:, :, rows]).to(device), strip_usable, settings.temporal)
        kept[:, rows] = (strip_usable & ~cloud & ~shadow).cpu().numpy()
    return kept


def with_temporal_check(base: Masker) -> Masker:
    """`base` with `temporal_check` as its stack check, named `<base>+temporal`."""
    return Masker(
        f"{base.name}{TEMPORAL_SUFFIX}",
        f"{base.description}, then each pixel's month checked for bright (cloud) and dark (shadow) outliers",
        base.cloud_classes,
        uses_scl_invalid=base.uses_scl_invalid,
        context_px=base.context_px,
        check_ready=base.check_ready,
        stack_check=temporal_check,
    )


for base_name in TEMPORAL_BASES:
    register_masker(with_temporal_check(masker_named(base_name)))
