"""The AOI's STAC Collection: merging months, the Items' links to it and to their scenes, offline
validation, months published at once, and three months published by the flow to moto S3 that pystac
walks, each Item's scenes fetched back from the rustac STAC API."""

import contextvars
import json
import threading
import time
import urllib.request
import uuid
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Any

import boto3
import pystac
import pytest
from pystac.stac_io import DefaultStacIO

from blocks.publish import LocalMonth
from flows.collection import publish_collection
from flows.monthly_mosaic import monthly_mosaic
from tasks.core.errors import InvalidProduct
from tasks.core.month import Month
from tasks.products.metadata import MonthStatistics, ProductRun
from tasks.stac.collection import (
    collection_id,
    collection_json,
    collection_months,
    updated_collection,
    validate_collection,
)
from tasks.stac.item import COLLECTION_FILE, COLLECTION_HREF, OfflineSTACValidator, build_item, item_document, item_json
from tasks.testing.served_month import flow_settings, save_products_block, serve_synthetic_month
from tasks.testing.servers import TEST_CREDENTIALS, S3Server
from tests.product_arrays import make_product_arrays, make_product_run, product_statistics

AOI = "l-shaped"
SCENE_API = "http://127.0.0.1:9/collections/sentinel-2-l2a/items"
"""A made-up STAC API address for scene hrefs in documents no one fetches."""
BUCKET_FOLDER = "basemaps"
FLOW_MONTHS = ("2020-03", "2020-04", "2020-05")
FLOW_DATES = tuple(date(2020, int(label[5:]), day) for label in FLOW_MONTHS for day in (8, 22))
"""Two acquisitions in each month the flow publishes."""
CONCURRENT_MONTHS = tuple(Month(2023 + index // 12, index % 12 + 1) for index in range(12))
PUBLISHERS = 2
"""Threads publishing months of one AOI at once, each its share of `CONCURRENT_MONTHS`."""
PUBLISHERS_START_S, PUBLISHED_WITHIN_S = 30.0, 60.0
"""Seconds the publishers may take to meet at the start, then to publish every month (it takes seconds):
a collection lock never freed shows as a publisher still running, not as a test that hangs."""


@pytest.fixture(scope="module")
def june() -> ProductRun:
    """A June 2024 month of the L-shaped AOI whose used scenes have STAC API hrefs."""
    run = make_product_run(make_product_arrays())
    scenes = tuple(replace(scene, href=f"{SCENE_API}/{scene.item_id}") for scene in run.scenes_used)
    return replace(run, scenes_used=scenes)


@pytest.fixture(scope="module")
def statistics() -> MonthStatistics:
    return product_statistics(make_product_arrays())


def month_item(run: ProductRun, month: Month, statistics: MonthStatistics, self_href: str) -> dict[str, Any]:
    """The published Item document of `run` moved to `month`, in the AOI's collection."""
    moved = replace(run, month=month)
    return item_document(build_item(moved, moved.names, statistics, self_href, collection_id(AOI)))


def item_href(month: Month) -> str:
    return f"./{month.year:04d}/{month.month:02d}/{AOI}_{month.label}_item.json"


def collection_of(months: list[Month], run: ProductRun, statistics: MonthStatistics) -> dict[str, Any]:
    """The collection after publishing `months` in that order."""
    document = None
    for month in months:
        item = month_item(run, month, statistics, f"s3://bucket/{AOI}/{item_href(month)[2:]}")
        document = updated_collection(document, item, AOI, item_href(month), f"s3://bucket/{AOI}/{COLLECTION_FILE}")
    assert document is not None
    return document


# --- The collection document ---------------------------------------------------------------------


def test_merging_months_keeps_every_month_sorted_and_spans_them(
    no_network: None, june: ProductRun, statistics: MonthStatistics
) -> None:
    months = [Month(2024, 6), Month(2023, 11), Month(2024, 2), Month(2024, 6)]  # June twice: published again

    document = collection_of(months, june, statistics)

    validate_collection(document)
    validated = pystac.validation.validate_dict(document, validator=OfflineSTACValidator())
    assert any("collection-spec/json-schema/collection.json" in uri for uri in validated)
    assert document["id"] == collection_id(AOI) == f"s2-monthly-{AOI}"
    item_links = [link for link in document["links"] if link["rel"] == "item"]
    assert [link["href"] for link in item_links] == [
        "./2023/11/l-shaped_2023-11_item.json",
        "./2024/02/l-shaped_2024-02_item.json",
        "./2024/06/l-shaped_2024-06_item.json",
    ]
    assert list(collection_months(document)) == [Month(2023, 11), Month(2024, 2), Month(2024, 6)]
    assert document["extent"]["temporal"]["interval"] == [["2023-11-01T00:00:00Z", "2024-06-30T23:59:59.999999Z"]]
    assert document["extent"]["spatial"]["bbox"] == [pytest.approx(june.aoi_wgs84.boundingbox)]
    links = {link["rel"]: link for link in document["links"] if link["rel"] != "item"}
    assert links["self"]["href"] == f"s3://bucket/{AOI}/collection.json"
    assert links["root"]["href"] == "./collection.json"
    assert links["license"]["title"] == "Contains modified Copernicus Sentinel data 2023, 2024"
    assert document["license"] == "other"


def test_the_spatial_extent_covers_every_months_bbox(june: ProductRun, statistics: MonthStatistics) -> None:
    first = month_item(june, Month(2024, 5), statistics, "s3://bucket/a.json")
    second = month_item(june, Month(2024, 6), statistics, "s3://bucket/b.json")
    second["bbox"] = [value + 1.0 for value in second["bbox"]]

    document = updated_collection(
        updated_collection(None, first, AOI, item_href(Month(2024, 5)), "s3://bucket/c.json"),
        second,
        AOI,
        item_href(Month(2024, 6)),
        "s3://bucket/c.json",
    )

    west, south, _, _ = first["bbox"]
    _, _, east, north = second["bbox"]
    assert document["extent"]["spatial"]["bbox"] == [[west, south, east, north]]


def test_processing_render_and_item_assets(june: ProductRun, statistics: MonthStatistics) -> None:
    document = collection_of([Month(2024, 6)], june, statistics)
    item = month_item(june, Month(2024, 6), statistics, "s3://bucket/a.json")

    (processor,) = [provider for provider in document["providers"] if "processor" in provider["roles"]]
    assert processor["processing:software"] == item["properties"]["processing:software"]
    assert processor["processing:software"]["s2-monthly-basemap"] and processor["processing:software"]["GDAL"]
    assert processor["processing:level"] == item["properties"]["processing:level"] == "L3"
    (true_color,) = document["renders"].values()
    assert true_color == item["properties"]["renders"]["true-color"]
    assert true_color["assets"] == ["mosaic"] and true_color["bidx"] == [1, 2, 3]
    assert true_color["rescale"] == [[0, 3000]] * 3 and true_color["nodata"] == 0
    assert set(document["item_assets"]) == {"mosaic", "count", "quicklook", "metadata"}
    assert document["item_assets"]["mosaic"]["title"] == item["assets"]["mosaic"]["title"]


@pytest.mark.parametrize(
    ("break_collection", "schema"),
    [
        (lambda document: document["providers"][1]["processing:software"].update({"GDAL": 3}), "processing"),
        (lambda document: [provider.update({"roles": ["host"]}) for provider in document["providers"]], "processing"),
        (lambda document: document["renders"]["true-color"].pop("assets"), "render"),
        (lambda document: document.pop("item_assets"), "render"),
        (lambda document: document["extent"].pop("temporal"), "collection.json"),
    ],
)
def test_a_broken_collection_fails_offline_validation(
    no_network: None, june: ProductRun, statistics: MonthStatistics, break_collection: Any, schema: str
) -> None:
    document = collection_of([Month(2024, 6)], june, statistics)
    break_collection(document)

    with pytest.raises(InvalidProduct, match=f"STAC Collection .* does not validate against .*{schema}"):
        collection_json(document)


def test_a_published_item_links_its_collection_and_its_scenes(
    no_network: None, june: ProductRun, statistics: MonthStatistics
) -> None:
    self_href = "s3://bucket/basemaps/l-shaped/2024/06/l-shaped_2024-06_item.json"

    document = json.loads(item_json(build_item(june, june.names, statistics, self_href, collection_id(AOI))))

    assert document["collection"] == collection_id(AOI)
    links = document["links"]
    assert {link["rel"]: link["href"] for link in links if link["rel"] in ("root", "parent", "collection", "self")} == {
        "root": COLLECTION_HREF, "parent": COLLECTION_HREF, "collection": COLLECTION_HREF, "self": self_href,
    }  # fmt: skip
    derived = [link for link in links if link["rel"] == "derived_from"]
    assert [link["href"] for link in derived] == [scene.href for scene in june.scenes_used]
    assert [link["title"] for link in derived] == [scene.item_id for scene in june.scenes_used]
    assert document["assets"]["mosaic"]["href"] == "./l-shaped_2024-06_mosaic.tif"


def test_a_scene_without_an_api_href_gets_no_derived_from_link(june: ProductRun, statistics: MonthStatistics) -> None:
    first, second = june.scenes_used
    run = replace(june, scenes_used=(first, replace(second, href=None)))

    document = item_document(build_item(run, run.names, statistics))

    assert [link["href"] for link in document["links"] if link["rel"] == "derived_from"] == [first.href]
    assert "collection" not in document


# --- Months of one AOI published at once -------------------------------------------------------


def published_month(output_dir: Path, month: Month, run: ProductRun, statistics: MonthStatistics, scratch: Path) -> LocalMonth:
    """The month folder below `output_dir` with the Item of `run` moved to `month` published in it."""
    destination = LocalMonth(output_dir, AOI, month.label)
    moved = replace(run, month=month)
    item = build_item(moved, moved.names, statistics, destination.url(moved.names.item), collection_id(AOI))
    local = scratch / moved.names.item
    local.write_bytes(item_json(item))
    destination.put({moved.names.item: local})
    return destination


def test_months_published_at_once_are_all_kept(
    no_prefect_server: None, june: ProductRun, statistics: MonthStatistics, tmp_path: Path
) -> None:
    output_dir, lock_dir = tmp_path / "output", tmp_path / "staging"
    destinations = [published_month(output_dir, month, june, statistics, tmp_path) for month in CONCURRENT_MONTHS]
    start = threading.Barrier(PUBLISHERS)
    errors: list[BaseException] = []

    def publish_share(share: list[LocalMonth]) -> None:
        try:
            start.wait(PUBLISHERS_START_S)
            for destination in share:
                publish_collection(destination, lock_dir)
        except BaseException as error:  # reported by the test below
            errors.append(error)

    threads = [
        threading.Thread(
            target=contextvars.copy_context().run, args=(publish_share, destinations[index::PUBLISHERS]), daemon=True
        )
        for index in range(PUBLISHERS)
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + PUBLISHERS_START_S + PUBLISHED_WITHIN_S
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))

    still_publishing = [thread.name for thread in threads if thread.is_alive()]
    assert still_publishing == [], f"still publishing after {PUBLISHERS_START_S + PUBLISHED_WITHIN_S:g} s: {still_publishing}"
    assert errors == []
    document = json.loads((output_dir / AOI / COLLECTION_FILE).read_text())
    assert set(collection_months(document)) == set(CONCURRENT_MONTHS), "a month published at the same time was lost"
    validate_collection(document)
    collection = pystac.Collection.from_file(str(output_dir / AOI / COLLECTION_FILE))
    assert sorted(item.id for item in collection.get_items()) == sorted(
        f"{AOI}-{month.label}" for month in CONCURRENT_MONTHS
    )


def test_a_month_without_a_published_item_does_not_join(no_prefect_server: None, tmp_path: Path) -> None:
    destination = LocalMonth(tmp_path / "output", AOI, "2024-06")

    with pytest.raises(InvalidProduct, match="l-shaped_2024-06_item.json is not published"):
        publish_collection(destination, tmp_path / "staging")
    assert not (tmp_path / "output" / AOI / COLLECTION_FILE).exists()


# --- Three months through the flow to S3 --------------------------------------------------------


class BucketStacIO(DefaultStacIO):
    """pystac's reader, with `s3://` hrefs read through boto3 (here: from moto)."""

    def __init__(self, endpoint_url: str) -> None:
        super().__init__()
        self.client = boto3.client("s3", endpoint_url=endpoint_url, **TEST_CREDENTIALS)

    def read_text_from_href(self, href: str) -> str:
        if not href.startswith("s3://"):
            return super().read_text_from_href(href)
        bucket, key = href.removeprefix("s3://").split("/", 1)
        return self.client.get_object(Bucket=bucket, Key=key)["Body"].read().decode()


def test_three_months_on_s3_walk_from_the_collection_to_every_scene(
    prefect_harness: None, s3_server: S3Server, stac_api_factory: Any, tmp_path: Path
) -> None:
    served = serve_synthetic_month(s3_server, stac_api_factory, tmp_path, dates=FLOW_DATES, duplicated_dates=())
    bucket = s3_server.make_bucket(f"products-{uuid.uuid4().hex[:12]}")
    block = save_products_block("collection-products", bucket, BUCKET_FOLDER, s3_server.endpoint_url)
    reports = [
        monthly_mosaic(flow_settings(served, tmp_path / "ws", month=label, aoi_name="farm", s3_block=block))
        for label in FLOW_MONTHS
    ]

    stac_io = BucketStacIO(s3_server.endpoint_url)
    collection = pystac.Collection.from_file(f"s3://{bucket}/{BUCKET_FOLDER}/farm/{COLLECTION_FILE}", stac_io=stac_io)
    items = sorted(collection.get_items(), key=lambda item: item.id)

    assert collection.id == collection_id("farm")
    assert [item.id for item in items] == [f"farm-{label}" for label in FLOW_MONTHS]
    assert [item.get_self_href() for item in items] == [report.product_urls["item"] for report in reports]
    interval = collection.extent.temporal.intervals[0]
    assert (interval[0], interval[1]) == (Month.parse(FLOW_MONTHS[0]).start, Month.parse(FLOW_MONTHS[-1]).end)
    for item, report in zip(items, reports, strict=True):
        assert item.collection_id == collection.id
        assert item.get_collection() is not None and item.get_collection().id == collection.id
        metadata = json.loads(stac_io.read_text(report.product_urls["metadata"]))
        used = {scene["id"] for scene in metadata["scenes_used"]}
        derived = [link.href for link in item.links if link.rel == "derived_from"]
        assert used and len(derived) == len(used) == report.scenes_used
        fetched = set()
        for href in derived:
            assert href.startswith(served.api_url), href
            with urllib.request.urlopen(href, timeout=10) as response:
                fetched.add(json.loads(response.read())["id"])
        assert fetched == used, f"{item.id}: its derived_from links do not resolve to the scenes it used"
