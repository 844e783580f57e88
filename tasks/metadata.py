"""What a run made and how: the input record the flow hands over, product names, and metadata.json.

The flow builds one `ProductRun` (AOI, grid, month, settings, scenes used and failed); metadata.json
and the STAC Item are built from it and from the `BandStatistics` of the finished rasters.
Statistics are in stored values (digital numbers); multiply reflectance bands by their scale.
"""

import importlib.metadata
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from odc.geo.geobox import GeoBox
from odc.geo.geom import Geometry
from pyproj import Geod

from tasks.aoi import WGS84, aoi_in_crs
from tasks.cog import (
    COUNT_DESCRIPTION,
    HIGH_PERCENTILE,
    LOW_PERCENTILE,
    MOSAIC_BANDS,
    REFLECTANCE_SCALE_FACTOR,
)
from tasks.grid import grid_metadata
from tasks.month import Month
from tasks.scene import NODATA, FailedScene, SkippedScene, UsedScene
from tasks.settings import CompositeSettings, MaskSettings

__all__ = [
    "PROJECT_DISTRIBUTION",
    "TILES_FOLDER",
    "BandStatistics",
    "ProductNames",
    "ProductRun",
    "TileFiles",
    "aoi_area_km2",
    "attribution",
    "metadata_json",
    "statistics_from_histogram",
]

PROJECT_DISTRIBUTION = "s2-monthly-basemap"
PYPROJECT_PATH = Path(__file__).resolve().parents[1] / "pyproject.toml"
SOFTWARE_DISTRIBUTIONS = ("prefect", "rasterio", "torch", "omnicloudmask", "odc-geo", "pystac", "rio-cogeo")
ATTRIBUTION_TEMPLATE = "Contains modified Copernicus Sentinel data {years}"
SQUARE_METRES_PER_KM2 = 1_000_000.0
MOSAIC_SUFFIX = "_mosaic.tif"
TILES_FOLDER = "tiles"
"""Where a tiled month's tile COGs lie inside its month folder."""
WGS84_ELLIPSOID = Geod(ellps="WGS84")


@dataclass(frozen=True)
class ProductNames:
    """File names of one run's products, deterministic from AOI name and month."""

    mosaic: str
    count: str
    quicklook: str
    metadata: str
    item: str

    @property
    def stem(self) -> str:
        """'<aoi>_<YYYY-MM>', the start of every product's name."""
        return self.mosaic.removesuffix(MOSAIC_SUFFIX)

    @property
    def mosaic_index(self) -> str:
        """The GDAL VRT that opens a tiled month's mosaic tiles as one raster."""
        return f"{self.stem}_mosaic.vrt"

    @property
    def count_index(self) -> str:
        return f"{self.stem}_count.vrt"

    def tile_mosaic(self, tile_label: str, tiles_digest: str) -> str:
        """The mosaic COG of one tile built from inputs of `tiles_digest`, relative to the month folder.

        Each set of inputs publishes its tiles in its own folder, so a re-run never overwrites the
        tiles a published month's index points at."""
        return f"{TILES_FOLDER}/{tiles_digest}/{self.stem}_{tile_label}_mosaic.tif"

    def tile_count(self, tile_label: str, tiles_digest: str) -> str:
        return f"{TILES_FOLDER}/{tiles_digest}/{self.stem}_{tile_label}_count.tif"

    @classmethod
    def for_run(cls, aoi_name: str, month: Month) -> "ProductNames":
        stem = f"{aoi_name}_{month.label}"
        return cls(
            mosaic=f"{stem}{MOSAIC_SUFFIX}",
            count=f"{stem}_count.tif",
            quicklook=f"{stem}_quicklook.png",
            metadata=f"{stem}_metadata.json",
            item=f"{stem}_item.json",
        )


@dataclass(frozen=True)
class TileFiles:
    """One output tile's COGs, named relative to the month folder."""

    label: str
    mosaic: str
    count: str


@dataclass(frozen=True)
class ProductRun:
    """Everything the flow passes to the product stage about one AOI and month.

    `aoi` is the AOI polygon in any CRS and `aoi_digest` its identity (`tasks.aoi.aoi_digest`),
    `grid` the target grid of the mosaic. Every scene the search found is in exactly one of
    `scenes_used` (gave the mosaic at least one clear pixel), `scenes_failed` (could not be read or
    masked) and `scenes_skipped` (covers no AOI pixel, or no clear one), the last two with reasons.
    """

    aoi_name: str
    aoi_source: str
    aoi: Geometry
    aoi_digest: str
    grid: GeoBox
    month: Month
    composite: CompositeSettings
    mask: MaskSettings
    scenes_used: tuple[UsedScene, ...]
    scenes_failed: tuple[FailedScene, ...] = ()
    scenes_skipped: tuple[SkippedScene, ...] = ()
    tiles: tuple[TileFiles, ...] = ()
    """A tiled month's tile COGs, in row-major order; empty when the AOI is one tile."""
    single_cogs: bool = True
    """Whether the mosaic and count are also (for one tile: only) single COGs."""

    @property
    def names(self) -> ProductNames:
        return ProductNames.for_run(self.aoi_name, self.month)

    @property
    def mosaic_file(self) -> str:
        """The mosaic as one raster: its single COG, else its mosaic index."""
        return self.names.mosaic if self.single_cogs else self.names.mosaic_index

    @property
    def count_file(self) -> str:
        return self.names.count if self.single_cogs else self.names.count_index

    @property
    def product_id(self) -> str:
        """The STAC Item id: `<aoi>-<YYYY-MM>`."""
        return f"{self.aoi_name}-{self.month.label}"

    @property
    def scenes_found(self) -> int:
        return len(self.scenes_used) + len(self.scenes_failed) + len(self.scenes_skipped)

    @property
    def scene_years(self) -> tuple[int, ...]:
        """Years of the scenes used; the month's year when none is."""
        return tuple(sorted({scene.acquired.year for scene in self.scenes_used})) or (self.month.year,)

    @property
    def aoi_wgs84(self) -> Geometry:
        return aoi_in_crs(self.aoi, WGS84)


@dataclass(frozen=True)
class BandStatistics:
    """Statistics of one band's valid pixels inside the AOI, in stored values.

    Valid: inside the AOI and not nodata (for a band without nodata, every AOI pixel). The
    statistics are None when the band has no valid pixel.
    """

    name: str
    minimum: float | None
    maximum: float | None
    mean: float | None
    stddev: float | None
    p2: float | None
    p98: float | None
    valid_pixels: int
    aoi_pixels: int
    grid_pixels: int

    @property
    def valid_share(self) -> float:
        """Share of AOI pixels that are valid, 0..1."""
        return self.valid_pixels / self.aoi_pixels if self.aoi_pixels else 0.0

    @property
    def valid_percent(self) -> float:
        """Percentage of all grid pixels that are valid (the STAC raster extension's definition)."""
        return 100.0 * self.valid_pixels / self.grid_pixels

    def as_json(self) -> dict[str, float | int | None]:
        return {
            "min": self.minimum,
            "max": self.maximum,
            "mean": self.mean,
            "stddev": self.stddev,
            "p2": self.p2,
            "p98": self.p98,
            "valid_pixels": self.valid_pixels,
            "valid_share_of_aoi": self.valid_share,
        }


def statistics_from_histogram(name: str, histogram: np.ndarray, aoi_pixels: int, grid_pixels: int) -> BandStatistics:
    """Exact statistics of a band from the histogram of its valid AOI pixels over its whole integer range."""
    valid_pixels = int(histogram.sum())
    if valid_pixels == 0:
        return BandStatistics(name, None, None, None, None, None, None, 0, aoi_pixels, grid_pixels)
    values = np.flatnonzero(histogram)
    weights = histogram[values]
    mean = float(np.average(values, weights=weights))
    stddev = float(np.sqrt(np.average((values - mean) ** 2, weights=weights)))
    cumulative = np.cumsum(weights)

    def percentile(share: float) -> float:
        return float(values[np.searchsorted(cumulative, share / 100.0 * valid_pixels)])

    return BandStatistics(
        name=name,
        minimum=float(values[0]),
        maximum=float(values[-1]),
        mean=mean,
        stddev=stddev,
        p2=percentile(LOW_PERCENTILE),
        p98=percentile(HIGH_PERCENTILE),
        valid_pixels=valid_pixels,
        aoi_pixels=aoi_pixels,
        grid_pixels=grid_pixels,
    )


def attribution(years: tuple[int, ...]) -> str:
    """The Copernicus attribution for scenes acquired in `years`."""
    return ATTRIBUTION_TEMPLATE.format(years=", ".join(str(year) for year in years))


def project_version() -> str:
    """This project's version: the installed distribution's, else the source checkout's pyproject.toml."""
    try:
        return importlib.metadata.version(PROJECT_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return tomllib.loads(PYPROJECT_PATH.read_text())["project"]["version"]


def software_versions() -> dict[str, str]:
    """Versions of this project, GDAL and the libraries that shape the product."""
    versions = {PROJECT_DISTRIBUTION: project_version(), "GDAL": rasterio.__gdal_version__}
    for distribution in SOFTWARE_DISTRIBUTIONS:
        try:
            versions[distribution] = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            versions[distribution] = "not installed"
    return versions


def aoi_area_km2(aoi: Geometry) -> float:
    """Geodesic area of the AOI on the WGS 84 ellipsoid, in km²."""
    area_m2, _ = WGS84_ELLIPSOID.geometry_area_perimeter(aoi_in_crs(aoi, WGS84).geom)
    return abs(area_m2) / SQUARE_METRES_PER_KM2


def metadata_document(
    run: ProductRun,
    names: ProductNames,
    mosaic_statistics: tuple[BandStatistics, ...],
    count_statistics: BandStatistics,
) -> dict[str, Any]:
    """The content of metadata.json: plain JSON values only."""
    return {
        "id": run.product_id,
        "files": {
            "mosaic": run.mosaic_file,
            "count": run.count_file,
            "quicklook": names.quicklook,
            "stac_item": names.item,
            **(
                {
                    "mosaic_index": names.mosaic_index,
                    "count_index": names.count_index,
                    "tiles": [{"tile": tile.label, "mosaic": tile.mosaic, "count": tile.count} for tile in run.tiles],
                }
                if run.tiles
                else {}
            ),
        },
        "period": {"month": run.month.label, "start": run.month.start.isoformat(), "end": run.month.end.isoformat()},
        "aoi": {
            "name": run.aoi_name,
            "source": run.aoi_source,
            "bounds_epsg4326": list(run.aoi_wgs84.boundingbox),
            "area_km2": aoi_area_km2(run.aoi),
            "digest": run.aoi_digest,
        },
        "grid": grid_metadata(run.grid),
        "composite": run.composite.model_dump(mode="json"),
        "masking": run.mask.model_dump(mode="json"),
        "scenes_used": [
            {
                "id": scene.item_id,
                "acquired": scene.acquired.isoformat(),
                "processing_baseline": scene.processing_baseline,
                "valid_fraction": scene.valid_fraction,
            }
            for scene in run.scenes_used
        ],
        "scenes_found": run.scenes_found,
        "scenes_failed": [{"id": scene.item_id, "reason": scene.reason} for scene in run.scenes_failed],
        "scenes_skipped": [{"id": scene.item_id, "reason": scene.reason} for scene in run.scenes_skipped],
        "mosaic": {
            "dtype": "uint16",
            "nodata": NODATA,
            "bands": [
                {
                    "name": band.common_name,
                    "sentinel2_band": band.sentinel_band,
                    "center_wavelength_um": band.center_wavelength_um,
                    "scale": REFLECTANCE_SCALE_FACTOR,
                    "offset": 0.0,
                    "statistics": statistics.as_json(),
                }
                for band, statistics in zip(MOSAIC_BANDS, mosaic_statistics, strict=True)
            ],
        },
        "count": {
            "dtype": "uint8",
            "nodata": None,
            "description": COUNT_DESCRIPTION,
            "statistics": count_statistics.as_json(),
        },
        "software": software_versions(),
        "attribution": attribution(run.scene_years),
    }


def metadata_json(
    run: ProductRun,
    names: ProductNames,
    mosaic_statistics: tuple[BandStatistics, ...],
    count_statistics: BandStatistics,
) -> bytes:
    """metadata.json as UTF-8 bytes, indented for people."""
    document = metadata_document(run, names, mosaic_statistics, count_statistics)
    return (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode()
