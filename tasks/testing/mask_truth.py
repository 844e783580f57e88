"""How well a month's products match what a perfect mask would have given on a synthetic month.

A perfect mask keeps exactly the observations `SyntheticMonth.clear_mask` calls clear. So the true count
of a pixel is its number of clear observations, and the true mosaic is the composite's percentile of
those observations' values (`SyntheticMonth.clear_value`): what the pipeline would make if its masker
made no mistake. Scoring against that, not against `truth`, leaves out what compositing itself costs
(the jitter between dates), so the figures are the masker's alone.
"""

from dataclasses import dataclass
from typing import Literal

import numpy as np
import rasterio
import torch
from odc.geo.geobox import GeoBox

from tasks.compositing.percentile import percentile_composite
from tasks.geometry.aoi import aoi_in_crs, aoi_pixel_mask, load_aoi
from tasks.testing.synthetic import SyntheticMonth

__all__ = ["MaskScores", "mask_scores", "month_window"]


@dataclass(frozen=True)
class MaskScores:
    """`count_exact`: share of AOI pixels whose count equals their true clear count. `mae_dn`: mean absolute
    difference (DN, all bands) between mosaic and true mosaic over AOI pixels where both have a value."""

    count_exact: float
    mae_dn: float


def month_window(month_grid: GeoBox, grid: GeoBox) -> tuple[slice, slice]:
    """The (rows, columns) of `month_grid` that `grid` (same CRS and pixel lattice) covers."""
    column = (grid.affine.c - month_grid.affine.c) / month_grid.affine.a
    row = (grid.affine.f - month_grid.affine.f) / month_grid.affine.e
    if not (column == round(column) >= 0 and row == round(row) >= 0):
        raise ValueError("the products' grid is off the synthetic month's pixel lattice")
    return np.s_[int(row) : int(row) + grid.shape.y, int(column) : int(column) + grid.shape.x]


def mask_scores(
    month: SyntheticMonth,
    item_ids: list[str],
    product_urls: dict[str, str],
    aoi_source: str,
    percentile: float | Literal["median"] = 25.0,
) -> MaskScores:
    """Score a run's mosaic and count COGs (`product_urls`) on `month`, whose items `item_ids` the run
    used (one per date), over the AOI `aoi_source`, with the run's composite `percentile`."""
    with rasterio.open(product_urls["count"]) as dataset:
        count = dataset.read(1)
        grid = GeoBox(dataset.shape, dataset.transform, dataset.crs)
    with rasterio.open(product_urls["mosaic"]) as dataset:
        mosaic = dataset.read()
    window = month_window(month.grid, grid)
    inside = aoi_pixel_mask(aoi_in_crs(load_aoi(aoi_source), grid.crs), grid)
    clear = np.stack([month.clear_mask[item_id][window] for item_id in item_ids])
    values = np.stack([month.clear_value(item_id)[(slice(None), *window)] for item_id in item_ids])
    true_mosaic, true_count = percentile_composite(torch.from_numpy(values), torch.from_numpy(clear), percentile)
    both = inside & (count > 0) & (true_count.numpy() > 0)
    error = np.abs(mosaic.astype(np.int64) - true_mosaic.numpy().astype(np.int64))[:, both]
    return MaskScores(
        count_exact=float((count[inside] == true_count.numpy()[inside]).mean()),
        mae_dn=float(error.mean()) if error.size else 0.0,
    )
