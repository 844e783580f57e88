"""Spectral indices composited per pixel from the observations' own index values (NDVI).

An index is a normalized difference of two mosaic bands, `(a - b) / (a + b)`, named once in
`SPECTRAL_INDICES`; a second normalized-difference index is another entry there. What is computed,
for each pixel of a block:

1. per observation, from its uint16 reflectance DN (reflectance x 10000) and only where it is
   usable (`tasks.compositing.composite`: clear, no band at nodata, inside the AOI) and `a + b > 0`:
   `value = round_half_even(INDEX_SCALE * (a - b) / (a + b))`, the quotient taken in float64 from
   the exact integers (one rounding), so an int16 in -10000..10000;
2. the `CompositeSettings.index_percentile` of those values with the exact kernel
   (`tasks.compositing.percentile.percentile_composite` on int16): numpy's linear percentile of the per-observation
   values, rounded half to even, i.e. `np.round(np.nanpercentile(values, q, method="linear"))`;
3. `INDEX_NODATA` (-32768) where no observation gave a value (and so outside the AOI).

The index is composited from its own per-observation values, not computed from the reflectance
mosaic: a percentile of NDVI is not the NDVI of per-band percentiles. Stored values are the index
x 10000 (scale 0.0001). Pure torch on the stack's device (CPU or CUDA); no I/O, no Prefect.
"""

from dataclasses import dataclass
from typing import Literal

import torch

from tasks.compositing.percentile import percentile_composite
from tasks.core.scene import REFLECTANCE_BANDS

__all__ = [
    "INDEX_DTYPE",
    "INDEX_NODATA",
    "INDEX_SCALE",
    "INDEX_SCALE_FACTOR",
    "NDVI",
    "SPECTRAL_INDICES",
    "SpectralIndex",
    "index_composite",
    "index_observations",
]

INDEX_SCALE = 10_000
"""Stored value = index x this (an index in -1..1 becomes -10000..10000)."""
INDEX_SCALE_FACTOR = 1.0 / INDEX_SCALE
"""Multiply a stored index value by this to get the index (0.0001)."""
INDEX_DTYPE = "int16"
INDEX_NODATA = int(torch.iinfo(torch.int16).min)
"""-32768: no usable observation, or outside the AOI."""


@dataclass(frozen=True)
class SpectralIndex:
    """A normalized-difference index `(positive - negative) / (positive + negative)` of two mosaic bands."""

    name: str
    title: str
    positive_band: str
    negative_band: str

    @property
    def formula(self) -> str:
        return f"({self.positive_band} - {self.negative_band}) / ({self.positive_band} + {self.negative_band})"

    @property
    def description(self) -> str:
        """The band description written into its COGs and index."""
        return f"{self.name} {self.formula} x {INDEX_SCALE} (nodata {INDEX_NODATA})"


NDVI = SpectralIndex("ndvi", "Normalized difference vegetation index", positive_band="nir", negative_band="red")
SPECTRAL_INDICES: dict[str, SpectralIndex] = {index.name: index for index in (NDVI,)}
"""Every index `CompositeSettings.indices` can name, by name."""


def index_observations(stack: torch.Tensor, usable: torch.Tensor, index: SpectralIndex) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-observation index values (obs, 1, y, x) int16 (x `INDEX_SCALE`, rounded half to even) of a
    reflectance stack (obs, band, y, x) uint16 in `REFLECTANCE_BANDS` order, and where they are valid
    (obs, y, x) bool: `usable` and the two bands' sum above 0. Invalid values are 0.

    One observation at a time, so the float64 working memory is one observation's, not the stack's.
    """
    positive_at, negative_at = REFLECTANCE_BANDS.index(index.positive_band), REFLECTANCE_BANDS.index(index.negative_band)
    values = torch.zeros((stack.shape[0], 1, *stack.shape[2:]), dtype=torch.int16, device=stack.device)
    valid = torch.empty_like(usable)
    for observation in range(stack.shape[0]):
        positive = stack[observation, positive_at].to(torch.float64)
        negative = stack[observation, negative_at].to(torch.float64)
        total = positive + negative
        torch.logical_and(usable[observation], total > 0, out=valid[observation])
        scaled = positive.sub_(negative).mul_(INDEX_SCALE).div_(total.clamp_(min=1)).round_()
        values[observation, 0].copy_(scaled).mul_(valid[observation])  # cast and zero the invalid in place
    return values, valid


def index_composite(
    stack: torch.Tensor, usable: torch.Tensor, index: SpectralIndex, percentile: float | Literal["median"]
) -> torch.Tensor:
    """The index composite (y, x) int16 of a block: the `percentile` of its observations' index values
    (`index_observations`), `INDEX_NODATA` where none is valid. On the stack's device."""
    values, valid = index_observations(stack, usable, index)
    composite, count = percentile_composite(values, valid, percentile)
    return torch.where(count > 0, composite[0], INDEX_NODATA)
