"""Records that travel between stages: a found scene, its window of a tile, the mask classes, and
what became of each scene.

A scene window is an in-memory array on a sub-grid of a tile's read grid (a pixel-aligned slice of
the target grid's pixel lattice) with five bands in `SCENE_BANDS` order, all uint16 with nodata 0:
red, green, blue, nir as surface reflectance x 10000 with the BOA offset removed, then the SCL class.
Its mask is a (y, x) uint8 array of `MaskClass` values on the same sub-grid.
"""

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from enum import IntEnum
from typing import Any, NamedTuple

import numpy as np
from odc.geo.geobox import GeoBox

__all__ = [
    "NODATA",
    "REFLECTANCE_BANDS",
    "REFLECTANCE_SCALE",
    "SCENE_BANDS",
    "SCL_BAND",
    "FailedScene",
    "MaskClass",
    "SceneAsset",
    "SceneItem",
    "SceneWindow",
    "SkippedScene",
    "UsedScene",
    "scene_items_from_json",
    "scene_items_json",
]

REFLECTANCE_BANDS: tuple[str, ...] = ("red", "green", "blue", "nir")
SCL_BAND = "scl"
SCENE_BANDS: tuple[str, ...] = (*REFLECTANCE_BANDS, SCL_BAND)
REFLECTANCE_SCALE = 10_000
"""Harmonised digital numbers are surface reflectance times this factor."""
NODATA = 0


class MaskClass(IntEnum):
    """Per-pixel classes of a scene mask; only CLEAR is usable in the composite."""

    CLEAR = 0
    THICK_CLOUD = 1
    THIN_CLOUD = 2
    CLOUD_SHADOW = 3
    INVALID_SCL = 4
    NODATA = 5


class FailedScene(NamedTuple):
    """A scene that was found but could not be read or masked, with the one-line reason."""

    item_id: str
    reason: str


class SkippedScene(NamedTuple):
    """A found item that gave the mosaic nothing, with the reason: left out by the search (outside the
    month or AOI, a band missing, an older processing, too cloudy), or read but with no clear AOI pixel."""

    item_id: str
    reason: str


@dataclass(frozen=True)
class SceneAsset:
    """One band file of a STAC item, with the item's declared DN -> reflectance conversion."""

    href: str
    scale: float
    offset: float
    nodata: float | None = 0


@dataclass(frozen=True)
class SceneItem:
    """A Sentinel-2 L2A acquisition as found in a STAC catalogue.

    `assets` maps the canonical band names of `SCENE_BANDS` to their files; `footprint` is the item's
    GeoJSON geometry in EPSG:4326; `href` the item's own URL in its STAC API (None when it has none,
    e.g. an item of a local file).
    """

    item_id: str
    acquired: datetime
    tile_id: str
    processing_baseline: str | None
    cloud_cover: float | None
    assets: dict[str, SceneAsset]
    footprint: dict[str, Any] = field(repr=False)
    href: str | None = None


def scene_items_json(items: Sequence[SceneItem]) -> bytes:
    """The items as a JSON list (times in ISO 8601), for `scene_items_from_json`."""
    records = [{**asdict(item), "acquired": item.acquired.isoformat()} for item in items]
    return json.dumps(records).encode()


def scene_items_from_json(payload: bytes) -> list[SceneItem]:
    """The items `scene_items_json` wrote."""
    return [
        SceneItem(
            **{
                **record,
                "acquired": datetime.fromisoformat(record["acquired"]),
                "assets": {band: SceneAsset(**asset) for band, asset in record["assets"].items()},
            }
        )
        for record in json.loads(payload)
    ]


@dataclass(frozen=True)
class SceneWindow:
    """One scene's pixels on `grid`, a pixel-aligned slice of a tile's read grid.

    `bands` is (`SCENE_BANDS`, y, x) uint16; 0 outside the scene's data and outside the AOI.
    """

    item_id: str
    grid: GeoBox
    bands: np.ndarray


@dataclass(frozen=True)
class UsedScene:
    """A scene that gave the mosaic at least one clear pixel, as metadata.json and the STAC Item list it.

    `valid_fraction` is the share of the AOI pixels under the scene's footprint that hold its data;
    `href` the scene item's STAC API URL (`SceneItem.href`), which the product Item links as derived_from.
    """

    item_id: str
    acquired: datetime
    processing_baseline: str | None
    valid_fraction: float
    href: str | None = None
