"""What a run made and how: the input record the flow hands over, product names, and metadata.json.

The flow builds one `ProductRun` (AOI, grid, month, settings, scenes used and failed); metadata.json
and the STAC Item are built from it and from the `BandStatistics` of the finished rasters.
Statistics are in stored values (digital numbers); multiply reflectance bands by their scale.
"""

import importlib.metadata
import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from odc.geo.geobox import GeoBox
from odc.geo.geom import Geometry
from pyproj import Geod

from tasks.compositing.indices import INDEX_DTYPE, INDEX_NODATA, INDEX_SCALE_FACTOR, SPECTRAL_INDICES, SpectralIndex
from tasks.core.month import Month
from tasks.core.scene import NODATA, FailedScene, SkippedScene, UsedScene
from tasks.core.settings import CompositeSettings, MaskSettings
from tasks.geometry.aoi import WGS84, aoi_in_crs, lonlat_bbox
from tasks.geometry.grid import grid_metadata
from tasks.products.cog import (
    COUNT_DESCRIPTION,
    FILL_DESCRIPTION,
    FILL_DTYPE,
    FILL_NODATA,
    HIGH_PERCENTILE,
    LOW_PERCENTILE,
    MOSAIC_BANDS,
    REFLECTANCE_SCALE_FACTOR,
)

__all__ = [
    "COUNT_LAYER",
    "FILL_LAYER",
    "MOSAIC_LAYER",
    "OBSERVED_SHARE_FIELD",
    "PROJECT_DISTRIBUTION",
    "TILES_FOLDER",
    "BandStatistics",
    "MonthStatistics",
    "ProductNames",
    "ProductRun",
    "TileFiles",
    "aoi_area_km2",
    "attribution",
    "metadata_json",
    "statistics_from_histogram",
]

PROJECT_DISTRIBUTION = "s2-monthly-basemap"
PYPROJECT_PATH = Path(__file__).resolve().parents[2] / "pyproject.toml"
SOFTWARE_DISTRIBUTIONS = ("prefect", "rasterio", "torch", "omnicloudmask", "odc-geo", "pystac", "rio-cogeo")
ATTRIBUTION_TEMPLATE = "Contains modified Copernicus Sentinel data {years}"
SQUARE_METRES_PER_KM2 = 1_000_000.0
MOSAIC_LAYER, COUNT_LAYER = "mosaic", "count"
"""The layers every month has; an index's layer is its name (`tasks.compositing.indices`)."""
FILL_LAYER = "fill"
"""The gap-fill distance layer of a month filled from its neighbours (`tasks.gap_fill.fill`)."""
OBSERVED_SHARE_FIELD = "observed_share_of_aoi"
"""metadata.json's field (in `count`) of the share of the AOI with at least one clear observation."""
MOSAIC_SUFFIX = f"_{MOSAIC_LAYER}.tif"
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
        return self.layer_index(MOSAIC_LAYER)

    @property
    def count_index(self) -> str:
        return self.layer_index(COUNT_LAYER)

    def single_cog(self, layer: str) -> str:
        """The single COG of a raster layer ('mosaic', 'count' or an index such as 'ndvi')."""
        return f"{self.stem}_{layer}.tif"

    def layer_index(self, layer: str) -> str:
        """The GDAL VRT that opens a tiled month's `layer` tiles as one raster."""
        return f"{self.stem}_{layer}.vrt"

    def tile_layer(self, layer: str, tile_label: str, tiles_digest: str) -> str:
        """The `layer` COG of one tile built from inputs of `tiles_digest`, relative to the month folder.

        Each set of inputs publishes its tiles in its own folder, so a re-run never overwrites the
        tiles a published month's index points at."""
        return f"{TILES_FOLDER}/{tiles_digest}/{self.stem}_{tile_label}_{layer}.tif"

    def tile_mosaic(self, tile_label: str, tiles_digest: str) -> str:
        return self.tile_layer(MOSAIC_LAYER, tile_label, tiles_digest)

    def tile_count(self, tile_label: str, tiles_digest: str) -> str:
        return self.tile_layer(COUNT_LAYER, tile_label, tiles_digest)

    @classmethod
    def for_run(cls, aoi_name: str, month: Month) -> "ProductNames":
        stem = f"{aoi_name}_{month.label}"
        return cls(
            mosaic=f"{stem}{MOSAIC_SUFFIX}",
            count=f"{stem}_{COUNT_LAYER}.tif",
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
    further_layers: dict[str, str] = field(default_factory=dict)
    """{layer: its COG} of each further layer: the spectral indices, the fill layer."""

    @classmethod
    def of(cls, label: str, files: Mapping[str, str]) -> "TileFiles":
        """From a tile record's {layer: file}: mosaic, count and every further layer."""
        further = {layer: name for layer, name in files.items() if layer not in (MOSAIC_LAYER, COUNT_LAYER)}
        return cls(label, files[MOSAIC_LAYER], files[COUNT_LAYER], further)

    @property
    def files(self) -> dict[str, str]:
        """{layer: COG} of the tile: mosaic, count, then each further layer."""
        return {MOSAIC_LAYER: self.mosaic, COUNT_LAYER: self.count, **self.further_layers}


@dataclass(frozen=True)
class ProductRun:
    """Everything the flow passes to the product stage about one AOI and month.

    `aoi` is the AOI polygon in any CRS and `aoi_digest` its identity (`tasks.geometry.aoi.aoi_digest`),
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
    fill_method: str = "none"
    """`MosaicSettings.fill`; 'none' means the month has no fill layer."""
    fill_max_months: int = 0
    filled_pixels: int = 0
    """AOI pixels with no observation that took a value from another month."""
    observed_pixels: int = 0
    """AOI pixels with at least one clear observation this month (count >= 1)."""
    fill_sources: tuple[tuple[str, str], ...] = ()
    """('YYYY-MM', STAC Item URL) of each month that gave a filled pixel its value, in month order."""

    @property
    def names(self) -> ProductNames:
        return ProductNames.for_run(self.aoi_name, self.month)

    def layer_file(self, layer: str) -> str:
        """A layer ('mosaic', 'count', an index) as one raster: its single COG, else its mosaic index."""
        return self.names.single_cog(layer) if self.single_cogs else self.names.layer_index(layer)

    @property
    def mosaic_file(self) -> str:
        """The mosaic as one raster: its single COG, else its mosaic index."""
        return self.layer_file(MOSAIC_LAYER)

    @property
    def count_file(self) -> str:
        return self.layer_file(COUNT_LAYER)

    @property
    def indices(self) -> tuple[SpectralIndex, ...]:
        """The spectral indices the month has, in `CompositeSettings.indices` order."""
        return tuple(SPECTRAL_INDICES[name] for name in self.composite.indices)

    @property
    def further_layers(self) -> tuple[str, ...]:
        """The month's raster layers besides mosaic and count: each index, then the fill layer when filled."""
        return (*(index.name for index in self.indices), *((FILL_LAYER,) if self.filled else ()))

    @property
    def filled(self) -> bool:
        """Whether the month has a fill layer."""
        return self.fill_method != "none"

    def filled_share(self, aoi_pixels: int) -> float:
        """Share of the AOI's `aoi_pixels` that took a value from another month, 0..1."""
        return self.filled_pixels / aoi_pixels if aoi_pixels else 0.0

    def observed_share(self, aoi_pixels: int) -> float:
        """Share of the AOI's `aoi_pixels` with at least one clear observation this month, 0..1."""
        return self.observed_pixels / aoi_pixels if aoi_pixels else 0.0

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


@dataclass(frozen=True)
class MonthStatistics:
    """Statistics of a month's layers over the AOI: each mosaic band (`MOSAIC_BANDS` order), the count,
    each spectral index (`ProductRun.indices` order) and, for a filled month, the fill layer."""

    mosaic: tuple[BandStatistics, ...]
    count: BandStatistics
    indices: tuple[BandStatistics, ...] = ()
    fill: BandStatistics | None = None


def statistics_from_histogram(
    name: str, histogram: np.ndarray, aoi_pixels: int, grid_pixels: int, lowest_value: int = 0
) -> BandStatistics:
    """Exact statistics of a band from the histogram of its valid AOI pixels over its whole integer range;
    bin i counts the value `lowest_value + i` (e.g. -32768 for int16)."""
    valid_pixels = int(histogram.sum())
    if valid_pixels == 0:
        return BandStatistics(name, None, None, None, None, None, None, 0, aoi_pixels, grid_pixels)
    bins = np.flatnonzero(histogram)
    weights = histogram[bins]
    values = bins + lowest_value
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
    statistics: "MonthStatistics",
) -> dict[str, Any]:
    """The content of metadata.json: plain JSON values only."""
    return {
        "id": run.product_id,
        "files": {
            "mosaic": run.mosaic_file,
            "count": run.count_file,
            **{index.name: run.layer_file(index.name) for index in run.indices},
            **({FILL_LAYER: run.layer_file(FILL_LAYER)} if run.filled else {}),
            "quicklook": names.quicklook,
            "stac_item": names.item,
            **(
                {
                    "mosaic_index": names.mosaic_index,
                    "count_index": names.count_index,
                    **{f"{layer}_index": names.layer_index(layer) for layer in run.further_layers},
                    "tiles": [{"tile": tile.label, **tile.files} for tile in run.tiles],
                }
                if run.tiles
                else {}
            ),
        },
        "period": {"month": run.month.label, "start": run.month.start.isoformat(), "end": run.month.end.isoformat()},
        "aoi": {
            "name": run.aoi_name,
            "source": run.aoi_source,
            "bounds_epsg4326": lonlat_bbox(run.aoi_wgs84),
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
                    "statistics": band_statistics.as_json(),
                }
                for band, band_statistics in zip(MOSAIC_BANDS, statistics.mosaic, strict=True)
            ],
        },
        "count": {
            "dtype": "uint8",
            "nodata": None,
            "description": COUNT_DESCRIPTION,
            OBSERVED_SHARE_FIELD: run.observed_share(statistics.count.aoi_pixels),
            "statistics": statistics.count.as_json(),
        },
        **{
            index.name: index_metadata(index, run, index_statistics)
            for index, index_statistics in zip(run.indices, statistics.indices, strict=True)
        },
        **({FILL_LAYER: fill_metadata(run, statistics.fill)} if run.filled and statistics.fill else {}),
        "software": software_versions(),
        "attribution": attribution(run.scene_years),
    }


def index_metadata(index: SpectralIndex, run: ProductRun, statistics: BandStatistics) -> dict[str, Any]:
    """metadata.json's section on one spectral index (`tasks.compositing.indices`)."""
    return {
        "file": run.layer_file(index.name),
        "title": index.title,
        "formula": index.formula,
        "bands": [index.positive_band, index.negative_band],
        "percentile": run.composite.index_percentile,
        "dtype": INDEX_DTYPE,
        "nodata": INDEX_NODATA,
        "scale": INDEX_SCALE_FACTOR,
        "offset": 0.0,
        "statistics": statistics.as_json(),
    }


def fill_metadata(run: ProductRun, statistics: BandStatistics) -> dict[str, Any]:
    """metadata.json's section on the gap fill: how, how much, from which months, and its layer."""
    return {
        "file": run.layer_file(FILL_LAYER),
        "method": run.fill_method,
        "max_months": run.fill_max_months,
        "filled_pixels": run.filled_pixels,
        "filled_share_of_aoi": run.filled_share(statistics.aoi_pixels),
        "months_used": [{"month": month, "item": item_url} for month, item_url in run.fill_sources],
        "dtype": FILL_DTYPE,
        "nodata": FILL_NODATA,
        "description": FILL_DESCRIPTION,
        "statistics": statistics.as_json(),
    }


def metadata_json(
    run: ProductRun,
    names: ProductNames,
    statistics: "MonthStatistics",
) -> bytes:
    """metadata.json as UTF-8 bytes, indented for people."""
    document = metadata_document(run, names, statistics)
    return (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode()
