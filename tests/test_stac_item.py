"""The product STAC Item: content, extensions, a tiled month's assets, and validation with no network."""

import copy
from dataclasses import replace
from pathlib import Path
from typing import Any

import pystac
import pytest
import shapely.geometry

from tasks.core.errors import InvalidProduct
from tasks.products.metadata import ProductRun, TileFiles
from tasks.stac.item import VRT_MEDIA_TYPE, OfflineSTACValidator, build_item, item_document, item_json, validate_item
from tests.product_arrays import make_product_arrays, make_product_run, product_statistics

PROJECTION = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"
RASTER = "https://stac-extensions.github.io/raster/v1.1.0/schema.json"
EO = "https://stac-extensions.github.io/eo/v1.1.0/schema.json"
PROCESSING = "https://stac-extensions.github.io/processing/v1.1.0/schema.json"
RENDER = "https://stac-extensions.github.io/render/v2.0.0/schema.json"
COG_MEDIA_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"
TILE_LABELS = ("r000c000", "r000c001", "r001c000", "r001c001")
TILES_DIGEST = "0123456789ab"


def item_of(run: ProductRun) -> pystac.Item:
    return build_item(run, run.names, product_statistics(make_product_arrays()))


def tiled(run: ProductRun, single_cogs: bool) -> ProductRun:
    """`run` as a month of 2 x 2 tiles."""
    tiles = tuple(
        TileFiles(label, run.names.tile_mosaic(label, TILES_DIGEST), run.names.tile_count(label, TILES_DIGEST))
        for label in TILE_LABELS
    )
    return replace(run, tiles=tiles, single_cogs=single_cogs)


@pytest.fixture(scope="module")
def product() -> tuple[pystac.Item, ProductRun]:
    run = make_product_run(make_product_arrays())
    return item_of(run), run


def test_item_validates_offline_against_core_and_extensions(no_network: None, product: tuple) -> None:
    item, _ = product
    document = item_document(item)

    validated = pystac.validation.validate_dict(document, validator=OfflineSTACValidator())

    assert set(document["stac_extensions"]) == {PROJECTION, RASTER, EO, PROCESSING, RENDER}
    assert {PROJECTION, RASTER, EO, PROCESSING, RENDER} <= set(validated)
    assert any("item-spec/json-schema/item.json" in uri for uri in validated)
    validate_item(document)


def test_item_identity_time_and_geometry(product: tuple) -> None:
    item, run = product
    document = item_document(item)

    assert document["id"] == "l-shaped-2024-06"
    properties = document["properties"]
    assert properties["datetime"] is None
    assert properties["start_datetime"] == "2024-06-01T00:00:00Z"
    assert properties["end_datetime"].startswith("2024-06-30T23:59:59")
    geometry = shapely.geometry.shape(document["geometry"])
    assert geometry.equals_exact(run.aoi_wgs84.geom, tolerance=1e-9)
    assert geometry.geom_type == "Polygon" and len(geometry.exterior.coords) == 7
    assert document["bbox"] == pytest.approx([15.0, 45.0, 15.09, 45.07])
    assert "Contains modified Copernicus Sentinel data 2024" in properties["description"]


def test_item_projection_fields_describe_the_grid(product: tuple) -> None:
    item, run = product
    properties = item_document(item)["properties"]

    assert properties["proj:code"] == f"EPSG:{run.grid.crs.epsg}" == "EPSG:32633"
    assert properties["proj:shape"] == [run.grid.shape.y, run.grid.shape.x]
    assert properties["proj:transform"] == pytest.approx(list(run.grid.affine[:6]))
    assert properties["proj:bbox"] == pytest.approx(list(run.grid.extent.boundingbox))


def test_item_assets_roles_media_types_and_bands(product: tuple) -> None:
    item, _ = product
    assets = item_document(item)["assets"]

    assert assets["mosaic"]["href"] == "./l-shaped_2024-06_mosaic.tif"
    assert assets["mosaic"]["type"] == "image/tiff; application=geotiff; profile=cloud-optimized"
    assert assets["mosaic"]["roles"] == ["data"]
    assert [band["common_name"] for band in assets["mosaic"]["eo:bands"]] == ["red", "green", "blue", "nir"]
    assert [band["center_wavelength"] for band in assets["mosaic"]["eo:bands"]] == [0.665, 0.56, 0.49, 0.842]
    raster_bands = assets["mosaic"]["raster:bands"]
    assert len(raster_bands) == 4
    for band in raster_bands:
        assert (band["nodata"], band["data_type"], band["scale"], band["offset"]) == (0, "uint16", 0.0001, 0.0)
        statistics = band["statistics"]
        assert statistics["minimum"] <= statistics["mean"] <= statistics["maximum"]
        assert 0 < statistics["valid_percent"] < 100
    count_band = assets["count"]["raster:bands"][0]
    assert count_band["data_type"] == "uint8" and "nodata" not in count_band
    assert assets["quicklook"]["type"] == "image/png"
    assert set(assets["quicklook"]["roles"]) == {"overview", "visual"}
    assert assets["metadata"]["type"] == "application/json"
    assert assets["metadata"]["href"] == "./l-shaped_2024-06_metadata.json"


def test_item_has_no_self_link_unless_given(product: tuple) -> None:
    item, _ = product
    assert not [link for link in item_document(item)["links"] if link["rel"] == "self"]

    published = copy.deepcopy(item)
    published.set_self_href("s3://bucket/basemaps/l-shaped/2024/06/l-shaped_2024-06_item.json")
    document = item_document(published)

    assert [link["href"] for link in document["links"] if link["rel"] == "self"] == [
        "s3://bucket/basemaps/l-shaped/2024/06/l-shaped_2024-06_item.json"
    ]
    assert document["assets"]["mosaic"]["href"] == "./l-shaped_2024-06_mosaic.tif"


@pytest.mark.parametrize(
    ("break_item", "schema"),
    [
        (lambda document: document["properties"].update({"proj:shape": ["710", "780"]}), "projection"),
        (lambda document: document["properties"].update({"proj:transform": [10.0, 0.0]}), "projection"),
        (lambda document: document["assets"]["mosaic"]["raster:bands"][0].update({"data_type": "uint12"}), "raster"),
        (lambda document: document["assets"]["mosaic"]["eo:bands"][0].update({"common_name": "infrared"}), "eo"),
        (lambda document: document["properties"].pop("end_datetime"), "item.json"),
    ],
)
def test_broken_item_fails_validation(no_network: None, product: tuple, break_item: Any, schema: str) -> None:
    item, _ = product
    document = item_document(item)
    break_item(document)

    with pytest.raises(InvalidProduct, match=f"does not validate against .*{schema}"):
        validate_item(document)


def test_unknown_extension_fails_offline_instead_of_fetching(no_network: None, product: tuple) -> None:
    item, _ = product
    document = item_document(item)
    document["stac_extensions"].append("https://stac-extensions.github.io/sat/v1.0.0/schema.json")

    with pytest.raises(InvalidProduct, match="not available offline"):
        validate_item(document)


def test_item_json_round_trips_through_pystac(product: tuple, tmp_path: Path) -> None:
    item, _ = product
    path = tmp_path / "item.json"
    path.write_bytes(item_json(item))

    reread = pystac.Item.from_file(str(path))

    assert reread.id == item.id
    assert reread.assets["mosaic"].get_absolute_href() == str(tmp_path / "l-shaped_2024-06_mosaic.tif")


@pytest.mark.parametrize("single_cogs", [True, False], ids=["with single COGs", "index only"])
def test_a_tiled_item_lists_its_indexes_and_every_tile(no_network: None, product: tuple, single_cogs: bool) -> None:
    _, run = product
    tiled_run = tiled(run, single_cogs)

    document = item_document(item_of(tiled_run))

    validate_item(document)
    assets = document["assets"]
    tile_keys = {f"tile-{label}-{kind}" for label in TILE_LABELS for kind in ("mosaic", "count")}
    assert set(assets) == {"mosaic", "count", "quicklook", "metadata", "mosaic-index", "count-index"} | tile_keys
    assert assets["mosaic-index"]["href"] == "./l-shaped_2024-06_mosaic.vrt"
    assert assets["count-index"]["href"] == "./l-shaped_2024-06_count.vrt"
    for key in ("mosaic-index", "count-index"):
        assert assets[key]["type"] == VRT_MEDIA_TYPE and "data" in assets[key]["roles"]
    assert assets["tile-r001c000-mosaic"]["href"] == f"./tiles/{TILES_DIGEST}/l-shaped_2024-06_r001c000_mosaic.tif"
    assert assets["tile-r001c000-count"]["href"] == f"./tiles/{TILES_DIGEST}/l-shaped_2024-06_r001c000_count.tif"
    assert {assets[key]["type"] for key in tile_keys} == {COG_MEDIA_TYPE}
    assert (assets["mosaic"]["href"], assets["count"]["href"]) == (
        f"./{tiled_run.mosaic_file}",
        f"./{tiled_run.count_file}",
    )
    assert len(assets["mosaic"]["raster:bands"]) == 4 and len(assets["mosaic"]["eo:bands"]) == 4


def test_an_item_of_one_tile_has_no_index_or_tile_assets(product: tuple) -> None:
    item, _ = product

    assert set(item_document(item)["assets"]) == {"mosaic", "count", "quicklook", "metadata"}


def test_a_mosaic_asset_that_is_the_index_declares_the_vrt_media_type(product: tuple) -> None:
    _, run = product

    assets = item_document(item_of(tiled(run, single_cogs=False)))["assets"]

    assert assets["mosaic"]["href"].endswith(".vrt")
    assert assets["mosaic"]["type"] == assets["count"]["type"] == VRT_MEDIA_TYPE
