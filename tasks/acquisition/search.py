"""Finding the Sentinel-2 L2A scenes of an AOI and a month, in a STAC API or a local item file.

Steps, each a pure function: raw STAC item dicts (API search, or a local FeatureCollection) -> kept
when they intersect the AOI and were acquired in the month -> `SceneItem` with the canonical bands of
`SCENE_BANDS` and the item's STAC API URL -> one scene per acquisition (newest processing baseline) ->
scene-level cloud-cover limit -> sorted by acquisition time. Every item a step leaves out is kept in
the `SearchResult` with its reason (outside the AOI or month, a band's asset missing, an older
processing, above the cloud limit), so metadata.json lists every item the API returned.

De-duplication runs before the cloud-cover limit: a reprocessed twin whose (newer) cloud estimate
exceeds the limit must not let its stale older twin through.
"""

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any

import shapely
from odc.geo.geom import Geometry
from prefect import task
from prefect.cache_policies import NO_CACHE
from pystac_client import Client
from pystac_client.errors import ClientTypeError
from pystac_client.exceptions import APIError
from pystac_client.stac_api_io import StacApiIO
from pystac_client.warnings import DoesNotConformTo

from tasks.core.errors import (
    InvalidSettings,
    NoScenesFound,
    StacApiError,
    error_chain,
    first_line,
    name_not_found,
    portable_errors,
)
from tasks.core.logs import stage_logger
from tasks.core.month import Month
from tasks.core.retry import Failure, RetriesEnded, RetryPolicy, retried
from tasks.core.scene import NODATA, REFLECTANCE_SCALE, SCENE_BANDS, SCL_BAND, SceneAsset, SceneItem, SkippedScene
from tasks.core.settings import EARTH_SEARCH_COLLECTION, SearchSettings
from tasks.geometry.aoi import WGS84, aoi_in_crs, lonlat_bbox, lonlat_search_hull

__all__ = [
    "API_RETRY",
    "BOA_OFFSET",
    "DN_SCALE",
    "SearchResult",
    "UnusableItem",
    "api_href",
    "outside_window_reason",
    "newest_processing",
    "query_stac_api",
    "scene_from_item",
    "search_scenes",
    "search_scenes_task",
    "tile_id",
]

API_TIMEOUT_S = 60
"""Seconds to wait for one STAC API response."""
API_RETRY = RetryPolicy(attempts=6, first_delay_s=2.0, max_delay_s=30.0)
"""Retries of an unreachable STAC API: waits of about 2, 4, 8, 16 and 30 s (a minute in all)."""
DUPLICATE_WINDOW = timedelta(seconds=60)
"""Items of one tile acquired within this time of each other are one acquisition processed twice."""
BOA_OFFSET_BASELINE = (4, 0)
"""Processing baseline 04.00 and later store reflectance with a BOA offset."""
BOA_OFFSET = -0.1
"""That offset, in reflectance units: reflectance = DN * scale + offset."""
BOA_OFFSET_START = datetime(2022, 1, 25, tzinfo=UTC)
"""First acquisitions processed with baseline 04.00; used when an item declares no baseline."""
DN_SCALE = 1 / REFLECTANCE_SCALE
MGRS_TILE_PATTERN = re.compile(r"(?:^|[_-])T?(\d{1,2})([C-HJ-NP-X][A-HJ-NP-Z]{2})(?:_|$)")
SEQUENCE_PATTERN = re.compile(r"_(\d+)_L2A$")
API_URL_SCHEMES = ("http://", "https://")
"""A self link with one of these schemes is an item's URL in a STAC API (a local file's is not)."""
SOCKET_ERROR_PATTERN = re.compile(r"\[Errno -?\d+\] [^'\")]+")
TRANSIENT_HTTP_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
UNRESOLVED_NAME = re.compile(r"Failed to resolve '([^']+)'")
"""urllib3's message for a host name DNS could not resolve (the API's own, or one its links name)."""


@dataclass(frozen=True)
class AssetNames:
    """How one family of catalogues names the bands of `SCENE_BANDS` among an item's assets."""

    catalogues: str
    asset_key_of: Mapping[str, str]

    def matches(self, assets: Mapping[str, Any]) -> bool:
        return all(key in assets for key in self.asset_key_of.values())

    def missing(self, assets: Mapping[str, Any]) -> list[str]:
        return [key for key in self.asset_key_of.values() if key not in assets]


EARTH_SEARCH_V1 = AssetNames(
    "Earth Search v1 (sentinel-2-l2a, sentinel-2-c1-l2a)",
    MappingProxyType({"red": "red", "green": "green", "blue": "blue", "nir": "nir", "scl": "scl"}),
)
SAFE_BAND_NAMES = AssetNames(
    "Planetary Computer, Earth Search v0",
    MappingProxyType({"red": "B04", "green": "B03", "blue": "B02", "nir": "B08", "scl": "SCL"}),
)
KNOWN_ASSET_NAMES: tuple[AssetNames, ...] = (EARTH_SEARCH_V1, SAFE_BAND_NAMES)


@dataclass(frozen=True)
class SearchResult:
    """What a search found: the usable scenes, one per acquisition sorted by time, and every other
    item the source returned, each once with why it was left out."""

    scenes: list[SceneItem]
    left_out: list[SkippedScene]
    above_cloud_limit: int = 0
    """Scenes among `left_out` only because their eo:cloud_cover exceeds `max_cloud_cover`."""

    @property
    def items_found(self) -> int:
        """Items the STAC API (or the item file) returned for the AOI's hull and the month."""
        return len(self.scenes) + len(self.left_out)

    def more_scenes_hint(self, max_cloud_cover: float) -> str:
        """How to get more scenes: raising the cloud limit when it left scenes out, else nothing."""
        if not self.above_cloud_limit:
            return ""
        return (
            f"raise search.max_cloud_cover (now {max_cloud_cover:g}%: {self.above_cloud_limit} more scenes "
            "lie above it)"
        )


class UnusableItem(ValueError):
    """A STAC item that cannot be read as a scene; the message says why in one line."""


def search_scenes(aoi: Geometry, month: str, settings: SearchSettings) -> SearchResult:
    """The usable scenes over `aoi` acquired in `month`, one per acquisition, sorted by time, and the
    items left out, each with its reason.

    Items come from `settings.item_collection_path` when set (a local ItemCollection, any
    collection), else from the STAC API's `settings.collection`. Raises `NoScenesFound` when
    nothing is left, `StacApiError` when the API cannot be reached after retries or refuses the
    search, and `InvalidSettings` for a missing collection, an URL that is no STAC API, or an item
    file that cannot be read.
    """
    period = Month.parse(month)
    start, end = period.start, period.following_start
    aoi_wgs84 = aoi_in_crs(aoi, WGS84)  # split at lon 180 like the footprints (RFC 7946)
    if settings.item_collection_path:
        raw_items = read_item_file(settings.item_collection_path)
    else:
        raw_items = query_stac_api(aoi_wgs84, start, end, settings)
    left_out: list[SkippedScene] = []
    scenes: list[SceneItem] = []
    for item in raw_items:
        try:
            outside = outside_window_reason(item, aoi_wgs84, period)
            if outside:
                raise UnusableItem(outside)
            scenes.append(scene_from_item(item))
        except UnusableItem as unusable:
            left_out.append(SkippedScene(str(item.get("id")), str(unusable)))
    newest, older = newest_processing(scenes)
    kept = [scene for scene in newest if within_cloud_limit(scene, settings.max_cloud_cover)]
    cloudy = [
        SkippedScene(scene.item_id, f"eo:cloud_cover {scene.cloud_cover:g}% above search.max_cloud_cover {settings.max_cloud_cover:g}%")
        for scene in newest
        if not within_cloud_limit(scene, settings.max_cloud_cover)
    ]
    result = SearchResult(
        sorted(kept, key=lambda scene: (scene.acquired, scene.tile_id)), [*left_out, *older, *cloudy], len(cloudy)
    )
    stage_logger(__name__).info(
        "search %s %s: %d items, %d usable in AOI and month, %d after de-duplication, %d under %g%% cloud",
        _source(settings), month, len(raw_items), len(scenes), len(newest), len(kept), settings.max_cloud_cover,
    )  # fmt: skip
    if not kept:
        bounds = ", ".join(f"{value:.4f}" for value in lonlat_bbox(aoi_wgs84))
        fix = result.more_scenes_hint(settings.max_cloud_cover) or "check month, AOI, collection and stac_api_url"
        raise NoScenesFound(
            f"no scenes over AOI bounds ({bounds}) EPSG:4326 in {month} from {_source(settings)} with "
            f"eo:cloud_cover <= {settings.max_cloud_cover:g}% ({len(raw_items)} items found, {len(scenes)} "
            f"usable in AOI and month, {len(newest)} distinct); {fix}"
        )
    return result


def _source(settings: SearchSettings) -> str:
    if settings.item_collection_path:
        return f"item file {settings.item_collection_path}"
    return f"{settings.stac_api_url} collection {settings.collection!r}"


def query_stac_api(aoi_wgs84: Geometry, start: datetime, end: datetime, settings: SearchSettings) -> list[dict]:
    """All items of `settings.collection` intersecting the AOI's convex hull in [start, end), every page.

    The hull keeps requests small for detailed AOIs; items are filtered by the AOI itself afterwards.
    An unreachable API (no connection, timeout, HTTP 408/429/5xx) is retried per `API_RETRY`; then
    `StacApiError` says the retries are exhausted. A host DNS says does not exist (a typo in the URL)
    and a refused search are a `StacApiError` at once; a
    collection the API does not serve, or an URL that is no STAC API, an `InvalidSettings`.
    `aoi_wgs84` and the hull are split at lon 180 when they cross it (RFC 7946, `lonlat_search_hull`).
    """
    url = settings.stac_api_url

    def search_once(attempt: int) -> list[dict]:
        # No retry inside pystac-client (by default 5 more connections per request): `retried` is the one layer.
        client = Client.open(url, timeout=API_TIMEOUT_S, stac_io=StacApiIO(max_retries=None))
        if client.get_collection(settings.collection) is None:
            raise InvalidSettings(
                f"collection {settings.collection!r} not found at STAC API {url}; "
                f"check search.collection (Earth Search v1 serves {EARTH_SEARCH_COLLECTION!r})"
            )
        search = client.search(
            collections=[settings.collection],
            intersects=lonlat_search_hull(aoi_wgs84).json,
            datetime=[start, end - timedelta(microseconds=1)],  # STAC intervals include their end
            limit=settings.page_size,
        )
        return list(search.items_as_dicts())

    try:
        return retried(search_once, api_failure, API_RETRY, f"STAC API {url}")
    except RetriesEnded as ended:
        if ended.failure.transient or name_not_found(ended):
            raise StacApiError(
                f"STAC API {url} did not answer: {ended.reason}; check the URL and the network, then re-run"
            ) from None
        raise StacApiError(
            f"STAC API {url} refused the search of collection {settings.collection!r} ({ended.reason}); "
            "check stac_api_url and collection"
        ) from None
    except (ClientTypeError, DoesNotConformTo, NotImplementedError, ValueError) as error:
        raise InvalidSettings(
            f"{url} is not a STAC API with item search ({first_line(error)}); "
            "give an API root URL such as https://earth-search.aws.element84.com/v1, or set item_collection_path"
        ) from None


def api_failure(error: Exception) -> Failure | None:
    """How a STAC API request failed: no answer or HTTP 408/429/5xx is transient, a host name DNS says
    does not exist or another HTTP status permanent; anything else (an URL that is no STAC API, a
    missing collection) is no request failure."""
    if not isinstance(error, APIError):
        return None
    if name_not_found(error):
        named = next((match for link in error_chain(error) if (match := UNRESOLVED_NAME.search(str(link)))), None)
        return Failure(f"host {named.group(1) if named else 'of the URL'} does not resolve (DNS)", transient=False)
    status = getattr(error, "status_code", None)
    socket_error = SOCKET_ERROR_PATTERN.search(str(error))
    reason = socket_error.group(0) if socket_error else first_line(error)
    if status is None:
        return Failure(reason, transient=True)
    return Failure(f"HTTP {status}: {reason}", transient=status in TRANSIENT_HTTP_STATUSES)


def read_item_file(path: str) -> list[dict]:
    """The items of a local GeoJSON FeatureCollection / STAC ItemCollection file."""
    try:
        document = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise InvalidSettings(
            f"item_collection_path {path} cannot be read ({first_line(error)}); "
            "give a GeoJSON FeatureCollection of STAC items"
        ) from None
    features = document.get("features") if isinstance(document, dict) else None
    if not isinstance(features, list):
        raise InvalidSettings(
            f"item_collection_path {path} is not a FeatureCollection (no 'features' list); "
            "give a GeoJSON FeatureCollection of STAC items"
        )
    return features


def outside_window_reason(item: Mapping[str, Any], aoi_wgs84: Geometry, month: Month) -> str | None:
    """Why the item lies outside the month or the AOI (EPSG:4326), in one line; None when it lies in both.

    Both are split at lon 180 when they cross it (RFC 7946), so lon/lat coordinates compare as they are.
    """
    acquired = acquisition_time(item)
    if acquired is None:
        return "it has no datetime"
    if not month.start <= acquired < month.following_start:
        return f"acquired {acquired:%Y-%m-%dT%H:%M:%SZ}, outside {month.label}"
    footprint = item.get("geometry")
    if not footprint:
        return "it has no footprint (geometry)"
    if not shapely.geometry.shape(footprint).intersects(aoi_wgs84.geom):
        return "its footprint does not meet the AOI"
    return None


def acquisition_time(item: Mapping[str, Any]) -> datetime | None:
    """The item's `datetime` (else `start_datetime`) as an aware UTC datetime; None when absent."""
    properties = item.get("properties", {})
    text = properties.get("datetime") or properties.get("start_datetime")
    if not text:
        return None
    moment = datetime.fromisoformat(text)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def scene_from_item(item: Mapping[str, Any]) -> SceneItem:
    """The item as a `SceneItem` with canonical band assets; raises `UnusableItem` when a band or the time is missing."""
    assets = item.get("assets", {})
    acquired = acquisition_time(item)
    if acquired is None:
        raise UnusableItem("it has no datetime")
    names = next((candidate for candidate in KNOWN_ASSET_NAMES if candidate.matches(assets)), None)
    if names is None:
        closest = min(KNOWN_ASSET_NAMES, key=lambda candidate: len(candidate.missing(assets)))
        raise UnusableItem(f"assets {', '.join(closest.missing(assets))} missing (asset names of {closest.catalogues})")
    properties = item.get("properties", {})
    baseline = properties.get("s2:processing_baseline") or properties.get("sentinel:processing_baseline")
    reflectance_offset = boa_offset(baseline, acquired)
    return SceneItem(
        item_id=item["id"],
        acquired=acquired,
        tile_id=tile_id(item),
        processing_baseline=baseline,
        cloud_cover=properties.get("eo:cloud_cover"),
        assets={
            band: scene_asset(assets[names.asset_key_of[band]], band, reflectance_offset) for band in SCENE_BANDS
        },
        footprint=item["geometry"],
        href=api_href(item),
    )


def api_href(item: Mapping[str, Any]) -> str | None:
    """The item's own URL in its STAC API: its self link when that is an absolute HTTP(S) URL.

    None for an item without one, or whose self link is a file path or relative (an item of a local
    ItemCollection): no published product should point at a file of the machine that made it.
    """
    self_links = [link.get("href") for link in item.get("links", []) if link.get("rel") == "self"]
    href = self_links[0] if self_links else None
    return href if isinstance(href, str) and href.startswith(API_URL_SCHEMES) else None


def boa_offset(processing_baseline: str | None, acquired: datetime) -> float:
    """The BOA reflectance offset implied by the processing baseline (by the date when it is unknown)."""
    parsed = _baseline_number(processing_baseline)
    if parsed is not None:
        return BOA_OFFSET if parsed >= BOA_OFFSET_BASELINE else 0.0
    return BOA_OFFSET if acquired >= BOA_OFFSET_START else 0.0


def _baseline_number(processing_baseline: str | None) -> tuple[int, ...] | None:
    """'05.00' -> (5, 0); None for an absent or unreadable baseline."""
    if not processing_baseline:
        return None
    try:
        return tuple(int(part) for part in str(processing_baseline).split("."))
    except ValueError:
        return None


def scene_asset(asset: Mapping[str, Any], band: str, reflectance_offset: float) -> SceneAsset:
    """The band's file and DN conversion: declared `raster:bands` scale/offset/nodata, else the defaults.

    Reflectance bands default to scale 1/10000 and the baseline's offset; SCL to scale 1, offset 0.
    """
    is_scl = band == SCL_BAND
    scale = _declared(asset, "scale")
    offset = _declared(asset, "offset")
    nodata = _declared(asset, "nodata")
    return SceneAsset(
        href=asset["href"],
        scale=float(scale) if scale is not None else (1.0 if is_scl else DN_SCALE),
        offset=float(offset) if offset is not None else (0.0 if is_scl else reflectance_offset),
        nodata=nodata if nodata is not None else NODATA,
    )


def _declared(asset: Mapping[str, Any], field_name: str) -> Any:
    """A band field from `raster:bands` (STAC 1.0), `bands` (STAC 1.1) or the asset itself."""
    for bands_key in ("raster:bands", "bands"):
        bands = asset.get(bands_key) or [{}]
        if field_name in bands[0]:
            return bands[0][field_name]
    return asset.get(field_name)


def tile_id(item: Mapping[str, Any]) -> str:
    """The MGRS tile, e.g. '32TMT', from the item's properties or its id; the id itself when none is found."""
    properties = item.get("properties", {})
    for prefix in ("mgrs", "sentinel"):
        parts = [properties.get(f"{prefix}:{name}") for name in ("utm_zone", "latitude_band", "grid_square")]
        if all(part is not None for part in parts):
            return f"{int(parts[0]):02d}{parts[1]}{parts[2]}"
    for text in (
        properties.get("s2:mgrs_tile"),
        (properties.get("grid:code") or "").removeprefix("MGRS-"),
        properties.get("s2:tile_id"),
        item["id"],
    ):
        match = MGRS_TILE_PATTERN.search(str(text or ""))
        if match:
            return f"{int(match.group(1)):02d}{match.group(2)}"
    return item["id"]


def newest_processing(scenes: Iterable[SceneItem]) -> tuple[list[SceneItem], list[SkippedScene]]:
    """One scene per acquisition (same tile, acquired within `DUPLICATE_WINDOW`): the newest processing;
    and each older processing left out, with the scene that replaces it.

    Newest = highest processing baseline, then highest sequence number in the id (`..._1_L2A`),
    then the larger id.
    """
    kept: list[SceneItem] = []
    replaced: dict[str, SceneItem] = {}
    for scene in sorted(scenes, key=lambda scene: (scene.tile_id, scene.acquired)):
        twin = kept[-1] if kept else None
        if twin and twin.tile_id == scene.tile_id and scene.acquired - twin.acquired <= DUPLICATE_WINDOW:
            newer, older = sorted((twin, scene), key=_processing_rank, reverse=True)
            kept[-1] = replaced[older.item_id] = newer
        else:
            kept.append(scene)
    older_processings = [
        SkippedScene(item_id, f"an older processing of the same acquisition as {_newest(newer, replaced).item_id}")
        for item_id, newer in replaced.items()
    ]
    return kept, older_processings


def _newest(scene: SceneItem, replaced: Mapping[str, SceneItem]) -> SceneItem:
    """The scene that finally replaced `scene`, following a chain of three or more processings."""
    while scene.item_id in replaced:
        scene = replaced[scene.item_id]
    return scene


def _processing_rank(scene: SceneItem) -> tuple[tuple[int, ...], int, str]:
    sequence = SEQUENCE_PATTERN.search(scene.item_id)
    return (
        _baseline_number(scene.processing_baseline) or (-1,),
        int(sequence.group(1)) if sequence else 0,
        scene.item_id,
    )


def within_cloud_limit(scene: SceneItem, max_cloud_cover: float) -> bool:
    """Whether the scene's eo:cloud_cover (percent) is at most the limit; scenes without one are kept."""
    return scene.cloud_cover is None or scene.cloud_cover <= max_cloud_cover


@task(name="search-scenes", cache_policy=NO_CACHE)
@portable_errors
def search_scenes_task(aoi: Geometry, month: str, settings: SearchSettings) -> SearchResult:
    """`search_scenes` as a Prefect task; the API retries happen inside it, so the task does not retry."""
    return search_scenes(aoi, month, settings)
