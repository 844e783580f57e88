"""The STAC Item of one monthly product, and its validation with no network.

The Item's id is `<aoi>-<YYYY-MM>`, its geometry the AOI polygon in EPSG:4326, its datetime null with
`start_datetime`/`end_datetime` spanning the month. The projection fields in `properties` describe
the target grid shared by the mosaic, count and index (e.g. `ndvi`) assets. Asset hrefs are relative (`./<file>`): the
Item lies beside its files wherever they are copied (a local folder, `s3://.../{aoi}/{YYYY}/{MM}/`),
so it carries no self link unless one is given. Published into its AOI's STAC Collection
(`tasks.stac.collection`, `{aoi}/collection.json`), it names the collection and links it as parent,
collection and root (`../../collection.json`). Each used scene with a STAC API URL is a
`derived_from` link. The processing extension records the software and level, the render extension
a true-colour rendering of the mosaic; both are shared with the Collection.
"""

import json
from pathlib import Path
from typing import Any

import jsonschema.exceptions
import pystac
import shapely.geometry
from pystac.errors import STACValidationError
from pystac.extensions.eo import Band, EOExtension
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import DataType, RasterBand, RasterExtension, Statistics
from pystac.validation import validate_dict
from pystac.validation.stac_validator import JsonSchemaSTACValidator

from tasks.compositing.indices import INDEX_NODATA, INDEX_SCALE, INDEX_SCALE_FACTOR, SpectralIndex
from tasks.core.errors import InvalidProduct
from tasks.core.scene import NODATA
from tasks.geometry.aoi import lonlat_bbox
from tasks.geometry.crs import crs_code, crs_of
from tasks.geometry.grid import pixel_size_m
from tasks.products.cog import COUNT_DESCRIPTION, FILL_DESCRIPTION, FILL_NODATA, MOSAIC_BANDS, REFLECTANCE_SCALE_FACTOR
from tasks.products.metadata import (
    COUNT_LAYER,
    FILL_LAYER,
    MOSAIC_LAYER,
    BandStatistics,
    MonthStatistics,
    ProductNames,
    ProductRun,
    TileFiles,
    attribution,
    software_versions,
)

__all__ = [
    "COLLECTION_FILE",
    "COLLECTION_HREF",
    "FILLED_SHARE_PROPERTY",
    "FILL_SOURCE_REL",
    "PROCESSING_EXTENSION",
    "RENDER_EXTENSION",
    "VRT_MEDIA_TYPE",
    "OfflineSTACValidator",
    "build_item",
    "item_document",
    "item_json",
    "processing_fields",
    "renders",
    "validate_item",
    "validate_stac",
]

FILL_SOURCE_REL = "related"
"""Link relation from a filled month's Item to each month that gave a filled pixel its value (not
`derived_from`, which names the month's own source scenes)."""
FILLED_SHARE_PROPERTY = "basemap:filled_share"
"""Item property: share of the AOI's pixels, 0..1, that took their value from another month."""
VRT_MEDIA_TYPE = "application/xml"
"""GDAL VRT files are XML; no registered media type names them more precisely."""
SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"
"""Extension schemas for offline validation (see its README.md)."""
PROCESSING_EXTENSION = "https://stac-extensions.github.io/processing/v1.1.0/schema.json"
RENDER_EXTENSION = "https://stac-extensions.github.io/render/v2.0.0/schema.json"
COLLECTION_FILE = "collection.json"
"""The AOI's STAC Collection, in the AOI's folder above its months (`tasks.stac.collection`)."""
COLLECTION_HREF = f"../../{COLLECTION_FILE}"
"""Where an Item in its month folder `{aoi}/{YYYY}/{MM}/` finds its AOI's collection."""
PROCESSING_LEVEL = "L3"
"""A composite of many L2A acquisitions on one grid (the extension's level names, L3: gridded over time)."""
TRUE_COLOR_RENDER = "true-color"
TRUE_COLOR_BANDS = ("red", "green", "blue")
TRUE_COLOR_RESCALE_DN = (0, 3000)
"""Stored values (reflectance x 10000) stretched to the display range: reflectance 0 to 0.3."""


class OfflineSTACValidator(JsonSchemaSTACValidator):
    """pystac's JSON-schema validator with every schema read from disk, never from the network.

    Core and GeoJSON schemas come from pystac's own copies; extension schemas from
    `tasks/stac/schemas/` (see its README). A schema found in neither raises `InvalidProduct`.
    """

    def __init__(self) -> None:
        super().__init__()
        for schema_file in sorted(SCHEMA_DIR.glob("*.json")):
            schema = json.loads(schema_file.read_text())
            self.schema_cache[schema["$id"]] = schema

    def _get_schema(self, schema_uri: str) -> dict[str, Any]:
        if schema_uri not in self.schema_cache:
            raise InvalidProduct(
                f"STAC schema {schema_uri} is not available offline; add it to tasks/stac/schemas/"
            )
        return self.schema_cache[schema_uri]


def _statistics(statistics: BandStatistics) -> Statistics | None:
    if statistics.valid_pixels == 0:
        return None
    return Statistics.create(
        minimum=statistics.minimum,
        maximum=statistics.maximum,
        mean=statistics.mean,
        stddev=statistics.stddev,
        valid_percent=statistics.valid_percent,
    )


def _mosaic_asset(run: ProductRun, names: ProductNames, statistics: tuple[BandStatistics, ...]) -> pystac.Asset:
    asset = pystac.Asset(
        href=f"./{run.mosaic_file}",
        media_type=_media_type(run.mosaic_file),
        roles=["data"],
        title="Cloud-free surface reflectance mosaic (red, green, blue, nir)",
        description="Surface reflectance x 10000 (scale 0.0001), nodata 0.",
    )
    RasterExtension.ext(asset).bands = [
        RasterBand.create(
            nodata=NODATA,
            data_type=DataType.UINT16,
            scale=REFLECTANCE_SCALE_FACTOR,
            offset=0.0,
            spatial_resolution=pixel_size_m(run.grid),
            statistics=_statistics(band_statistics),
        )
        for band_statistics in statistics
    ]
    EOExtension.ext(asset).bands = [
        Band.create(
            name=band.sentinel_band,
            common_name=band.common_name,
            description=band.description,
            center_wavelength=band.center_wavelength_um,
            full_width_half_max=band.full_width_half_max_um,
        )
        for band in MOSAIC_BANDS
    ]
    return asset


def _count_asset(run: ProductRun, names: ProductNames, statistics: BandStatistics) -> pystac.Asset:
    asset = pystac.Asset(
        href=f"./{run.count_file}",
        media_type=_media_type(run.count_file),
        roles=["data"],
        title="Clear observation count",
        description=f"Number of clear observations per pixel; {COUNT_DESCRIPTION}. No nodata value.",
    )
    RasterExtension.ext(asset).bands = [
        RasterBand.create(
            data_type=DataType.UINT8,
            spatial_resolution=pixel_size_m(run.grid),
            statistics=_statistics(statistics),
        )
    ]
    return asset


def _index_asset(run: ProductRun, index: SpectralIndex, statistics: BandStatistics) -> pystac.Asset:
    file_name = run.layer_file(index.name)
    asset = pystac.Asset(
        href=f"./{file_name}",
        media_type=_media_type(file_name),
        roles=["data"],
        title=f"{index.title} ({index.name.upper()}), composited per pixel",
        description=(
            f"{index.formula} of each clear observation, x {INDEX_SCALE} (scale {INDEX_SCALE_FACTOR}), nodata "
            f"{INDEX_NODATA}; per pixel the percentile {run.composite.index_percentile} of those values."
        ),
    )
    RasterExtension.ext(asset).bands = [
        RasterBand.create(
            nodata=INDEX_NODATA,
            data_type=DataType.INT16,
            scale=INDEX_SCALE_FACTOR,
            offset=0.0,
            spatial_resolution=pixel_size_m(run.grid),
            statistics=_statistics(statistics),
        )
    ]
    return asset


def _fill_asset(run: ProductRun, statistics: BandStatistics) -> pystac.Asset:
    file_name = run.layer_file(FILL_LAYER)
    asset = pystac.Asset(
        href=f"./{file_name}",
        media_type=_media_type(file_name),
        roles=["data", "quality"],
        title=f"Gap fill ({run.fill_method}, up to {run.fill_max_months} months away)",
        description=f"{FILL_DESCRIPTION[0].upper()}{FILL_DESCRIPTION[1:]}. Filled pixels of the mosaic took their "
        f"value from the months linked as '{FILL_SOURCE_REL}'.",
    )
    RasterExtension.ext(asset).bands = [
        RasterBand.create(
            nodata=FILL_NODATA,
            data_type=DataType.UINT8,
            spatial_resolution=pixel_size_m(run.grid),
            statistics=_statistics(statistics),
        )
    ]
    return asset


def build_item(
    run: ProductRun,
    names: ProductNames,
    statistics: MonthStatistics,
    self_href: str | None = None,
    collection_id: str | None = None,
) -> pystac.Item:
    """The product's STAC Item; `self_href` (absolute) adds a self link, e.g. once it is published;
    `collection_id` names the AOI's collection, linked at `COLLECTION_HREF` as parent, collection and root.
    A filled month gets its filled share (`FILLED_SHARE_PROPERTY`) and a `FILL_SOURCE_REL` link to
    each month that gave a filled pixel its value."""
    aoi = run.aoi_wgs84
    item = pystac.Item(
        id=run.product_id,
        geometry=shapely.geometry.mapping(aoi.geom),
        bbox=lonlat_bbox(aoi),
        datetime=None,
        start_datetime=run.month.start,
        end_datetime=run.month.end,
        properties={
            "title": f"Sentinel-2 monthly mosaic {run.aoi_name} {run.month.label}",
            "description": f"Per-pixel composite of clear Sentinel-2 L2A observations. {attribution(run.scene_years)}",
            **processing_fields(),
            "renders": renders(),
        },
        stac_extensions=[PROCESSING_EXTENSION, RENDER_EXTENSION],
    )
    projection = ProjectionExtension.ext(item, add_if_missing=True)
    crs = crs_of(run.grid)
    projection.code = crs_code(crs)
    projection.wkt2 = None if projection.code else crs.to_wkt()
    projection.shape = list(run.grid.shape.yx)
    projection.transform = list(run.grid.affine[:6])
    projection.bbox = list(run.grid.extent.boundingbox)
    RasterExtension.add_to(item)
    EOExtension.add_to(item)
    item.add_asset("mosaic", _mosaic_asset(run, names, statistics.mosaic))
    item.add_asset("count", _count_asset(run, names, statistics.count))
    for index, index_statistics in zip(run.indices, statistics.indices, strict=True):
        item.add_asset(index.name, _index_asset(run, index, index_statistics))
    if run.filled and statistics.fill is not None:
        item.add_asset(FILL_LAYER, _fill_asset(run, statistics.fill))
        item.properties[FILLED_SHARE_PROPERTY] = run.filled_share(statistics.count.aoi_pixels)
        for month, item_url in run.fill_sources:
            item.add_link(pystac.Link(FILL_SOURCE_REL, item_url, pystac.MediaType.JSON, f"Gap-fill source month {month}"))
    item.add_asset(
        "quicklook",
        pystac.Asset(href=f"./{names.quicklook}", media_type=pystac.MediaType.PNG, roles=["overview", "visual"],
                     title="RGB quicklook, 2-98 percentile stretch"),
    )
    item.add_asset(
        "metadata",
        pystac.Asset(href=f"./{names.metadata}", media_type=pystac.MediaType.JSON, roles=["metadata"],
                     title="Run metadata: scenes, settings, statistics, software, attribution"),
    )
    for tile in run.tiles:
        _add_tile_assets(item, tile)
    if run.tiles:
        for layer in (MOSAIC_LAYER, COUNT_LAYER, *run.further_layers):
            item.add_asset(
                f"{layer}-index",
                pystac.Asset(href=f"./{names.layer_index(layer)}", media_type=VRT_MEDIA_TYPE, roles=["data", "index"],
                             title="GDAL VRT opening the tile COGs as one raster"),
            )
    if collection_id is not None:
        item.collection_id = collection_id
        for relation in (pystac.RelType.ROOT, pystac.RelType.PARENT, pystac.RelType.COLLECTION):
            item.add_link(pystac.Link(relation, COLLECTION_HREF, media_type=pystac.MediaType.JSON))
    for scene in run.scenes_used:
        if scene.href is not None:
            item.add_link(
                pystac.Link(pystac.RelType.DERIVED_FROM, scene.href, media_type=pystac.MediaType.GEOJSON, title=scene.item_id)
            )
    if self_href is not None:
        item.set_self_href(self_href)
    return item


def processing_fields() -> dict[str, Any]:
    """The processing extension's fields of a product: its level and the software that made it."""
    return {"processing:level": PROCESSING_LEVEL, "processing:software": software_versions()}


def renders() -> dict[str, Any]:
    """The render extension's `renders`: the mosaic's red, green and blue bands as true colour."""
    band_numbers = [[band.common_name for band in MOSAIC_BANDS].index(name) + 1 for name in TRUE_COLOR_BANDS]
    return {
        TRUE_COLOR_RENDER: {
            "title": "True colour (red, green, blue; reflectance 0 to 0.3)",
            "assets": ["mosaic"],
            "bidx": band_numbers,
            "rescale": [list(TRUE_COLOR_RESCALE_DN) for _ in band_numbers],
            "nodata": NODATA,
        }
    }


def _media_type(file_name: str) -> str:
    """COG for a single COG, XML for a mosaic index (a GDAL VRT)."""
    return VRT_MEDIA_TYPE if file_name.endswith(".vrt") else pystac.MediaType.COG


def _add_tile_assets(item: pystac.Item, tile: TileFiles) -> None:
    """The COGs of one output tile, keyed `tile-<label>-mosaic`, `tile-<label>-count` and `tile-<label>-<index>`."""
    for kind, href in tile.files.items():
        item.add_asset(
            f"tile-{tile.label}-{kind}",
            pystac.Asset(href=f"./{href}", media_type=pystac.MediaType.COG, roles=["data"], title=f"{kind} of tile {tile.label}"),
        )


def item_document(item: pystac.Item) -> dict[str, Any]:
    """The Item as a new dict of plain JSON values, hrefs exactly as set (relative assets stay relative)."""
    document = item.to_dict(include_self_link=item.get_self_href() is not None, transform_hrefs=False)
    return json.loads(json.dumps(document))


def validate_stac(document: dict[str, Any], kind: str) -> None:
    """Validate a STAC `kind` ('Item', 'Collection') dict against STAC core and its extensions,
    offline; raise `InvalidProduct`."""
    try:
        validate_dict(document, validator=OfflineSTACValidator())
    except STACValidationError as error:
        schema = str(error).splitlines()[0].rpartition(" against schema at ")[2]
        best = jsonschema.exceptions.best_match(error.source or [])
        problem = f"{best.json_path}: {best.message}" if best else str(error).splitlines()[0]
        raise InvalidProduct(
            f"STAC {kind} {document.get('id')} does not validate against {schema} ({problem}); fix that field"
        ) from None


def validate_item(document: dict[str, Any]) -> None:
    """Validate an Item dict against STAC core and its extensions, offline; raise `InvalidProduct`."""
    validate_stac(document, "Item")


def item_json(item: pystac.Item) -> bytes:
    """The validated Item as UTF-8 JSON bytes."""
    document = item_document(item)
    validate_item(document)
    return (json.dumps(document, indent=2) + "\n").encode()
