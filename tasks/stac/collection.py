"""The STAC Collection of one AOI: every published month of it, in `{aoi}/collection.json`.

`updated_collection(existing, item, ...)` is pure: from the published collection (None before the
first month) and a month's published Item, the collection listing every month published so far and
that one. Its id is `s2-monthly-<aoi>`; it links each month's Item by a relative href
(`./<YYYY>/<MM>/<aoi>_<YYYY-MM>_item.json`, sorted by month; a month published again keeps one
link); its temporal extent runs from the first instant of the earliest month to the last of the
latest, its spatial extent is the union of the Items' bboxes (EPSG:4326, across lon 180 as RFC 7946 has it). Licence `other`: the
Copernicus Sentinel data legal notice is its `license` link, titled with the attribution for the
months' years. The processing extension sits on the processor provider (this project, with the
level and software of the newest month), the render extension's true-colour `renders` on the
collection, with `item_assets` naming the assets every month has. Writing it under a lock is the
caller's part (`flows.collection`).
"""

import json
import re
from collections.abc import Mapping
from typing import Any

import pystac
from pystac.utils import datetime_to_str

from tasks.compositing.indices import SPECTRAL_INDICES
from tasks.core.month import Month
from tasks.geometry.aoi import union_lonlat_bboxes
from tasks.products.metadata import FILL_LAYER, PROJECT_DISTRIBUTION, attribution
from tasks.stac.item import COLLECTION_FILE, PROCESSING_EXTENSION, RENDER_EXTENSION, renders, validate_stac

__all__ = [
    "collection_id",
    "collection_json",
    "collection_months",
    "updated_collection",
    "validate_collection",
]

COLLECTION_ID_PREFIX = "s2-monthly-"
ITEM_HREF_PATTERN = re.compile(r"^\./(\d{4})/(\d{2})/[^/]+$")
"""A month's Item link, relative to the collection: `./<YYYY>/<MM>/<file>`."""
SENTINEL_LEGAL_NOTICE = "https://sentinel.esa.int/documents/247904/690755/Sentinel_Data_Legal_Notice"
SENTINEL_PRODUCER = {
    "name": "European Space Agency (ESA), Copernicus Sentinel-2",
    "roles": ["producer", "licensor"],
    "url": "https://sentinel.esa.int",
}
COMMON_ASSETS = ("mosaic", "count", "quicklook", "metadata")
"""Assets every month's Item has, described once in `item_assets`."""
DESCRIBED_ASSETS = (*COMMON_ASSETS, *SPECTRAL_INDICES, FILL_LAYER)
"""Assets `item_assets` describes: every month's, and those months have with some settings (an index, the
fill layer), kept once any month has had them."""
ITEM_ASSET_FIELDS = ("title", "description", "roles")
"""What `item_assets` repeats of an Item's asset; not its type, which is a COG or a VRT by month."""


def collection_id(aoi_name: str) -> str:
    """The id of the AOI's collection: `s2-monthly-<aoi>`."""
    return f"{COLLECTION_ID_PREFIX}{aoi_name}"


def collection_months(document: Mapping[str, Any]) -> dict[Month, dict[str, Any]]:
    """{month: its Item link} of a collection document; links of other shapes are not months of it."""
    months = {}
    for link in document.get("links", []):
        month = _month_of(link.get("href", "")) if link.get("rel") == pystac.RelType.ITEM else None
        if month is not None:
            months[month] = dict(link)
    return months


def _month_of(item_href: str) -> Month | None:
    """The month of an Item link `./<YYYY>/<MM>/<file>`; None for another href."""
    match = ITEM_HREF_PATTERN.match(item_href)
    return Month(int(match.group(1)), int(match.group(2))) if match else None


def updated_collection(
    existing: Mapping[str, Any] | None, item: Mapping[str, Any], aoi_name: str, item_href: str, self_href: str
) -> dict[str, Any]:
    """The AOI's collection with the month of `item` (a published Item document) added or replaced.

    `existing` is the published collection, None for the first month; `item_href` the Item's href
    relative to the collection (`./<YYYY>/<MM>/<file>`), `self_href` the collection's absolute URL
    (`s3://bucket/key` or a local path). Every other month of `existing` is kept.
    """
    month = _month_of(item_href)
    if month is None:
        raise ValueError(f"item href {item_href!r} is not ./<YYYY>/<MM>/<file>")
    months = collection_months(existing) if existing else {}
    months[month] = {
        "rel": pystac.RelType.ITEM,
        "href": item_href,
        "type": pystac.MediaType.GEOJSON,
        "title": item["properties"].get("title", item["id"]),
    }
    ordered = sorted(months, key=lambda month: month.label)
    years = tuple(sorted({month.year for month in ordered}))
    bboxes = [item["bbox"], *(existing["extent"]["spatial"]["bbox"] if existing else [])]
    processor = {
        "name": PROJECT_DISTRIBUTION,
        "roles": ["processor"],
        **{key: value for key, value in item["properties"].items() if key.startswith("processing:")},
    }
    return {
        "type": "Collection",
        "stac_version": pystac.get_stac_version(),
        "stac_extensions": [PROCESSING_EXTENSION, RENDER_EXTENSION],
        "id": collection_id(aoi_name),
        "title": f"Sentinel-2 monthly mosaics {aoi_name}",
        "description": (
            f"Monthly cloud-free mosaics of AOI {aoi_name}: per-pixel composites of clear Sentinel-2 L2A "
            f"observations, one Item per month. {attribution(years)}"
        ),
        "license": "other",
        "providers": [SENTINEL_PRODUCER, processor],
        "extent": {
            "spatial": {"bbox": [union_lonlat_bboxes(bboxes)]},
            "temporal": {"interval": [[datetime_to_str(ordered[0].start), datetime_to_str(ordered[-1].end)]]},
        },
        "item_assets": {
            **(existing.get("item_assets", {}) if existing else {}),
            **{
                key: {field: asset[field] for field in ITEM_ASSET_FIELDS if field in asset}
                for key, asset in item["assets"].items()
                if key in DESCRIBED_ASSETS
            },
        },
        "renders": renders(),
        "links": [
            {"rel": pystac.RelType.ROOT, "href": f"./{COLLECTION_FILE}", "type": pystac.MediaType.JSON},
            {"rel": pystac.RelType.SELF, "href": self_href, "type": pystac.MediaType.JSON},
            {"rel": pystac.RelType.LICENSE, "href": SENTINEL_LEGAL_NOTICE, "title": attribution(years)},
            *(months[month] for month in ordered),
        ],
    }


def validate_collection(document: dict[str, Any]) -> None:
    """Validate a Collection dict against STAC core and its extensions, offline; raise `InvalidProduct`."""
    validate_stac(document, "Collection")


def collection_json(document: dict[str, Any]) -> bytes:
    """The validated collection as UTF-8 JSON bytes."""
    validate_collection(document)
    return (json.dumps(document, indent=2) + "\n").encode()
