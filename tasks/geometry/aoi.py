"""Loading the area of interest from a vector file, a WKT string or a bbox, in any CRS.

The AOI becomes one (multi)polygon `odc.geo.geom.Geometry` carrying its CRS. Every problem is a
one-line `InvalidAOI` that names the source and the problem.

Across the antimeridian (lon 180) a geometry in lon/lat is either "unwrapped", one piece with
longitudes running past 180, which reprojects to a projected CRS cleanly; or "split" as RFC 7946 and
STAC APIs have it, a MultiPolygon cut at lon 180 with every longitude in [-180, 180], for everything
that goes to EPSG:4326. `lonlat_unwrapped` and `split_at_antimeridian` turn one into the other.
"""

import hashlib
import math
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import shapely
import shapely.affinity
import shapely.wkt
from odc.geo import CRS
from odc.geo.geobox import GeoBox
from odc.geo.geom import Geometry
from rasterio.errors import NotGeoreferencedWarning
from rasterio.features import geometry_mask
from shapely.validation import explain_validity

from tasks.core.errors import InvalidAOI, first_line
from tasks.geometry.crs import crs_of

__all__ = [
    "AOI_NAME_PATTERN",
    "WGS84",
    "aoi_centre_lonlat",
    "aoi_digest",
    "aoi_in_crs",
    "aoi_label",
    "aoi_name",
    "aoi_pixel_mask",
    "footprint_in_crs",
    "load_aoi",
    "lonlat_bbox",
    "lonlat_search_hull",
    "lonlat_unwrapped",
    "union_lonlat_bboxes",
]

WGS84 = "EPSG:4326"
NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?"
BBOX_PATTERN = re.compile(rf"^\s*(?:{NUMBER}\s*,\s*){{3}}{NUMBER}\s*$", re.IGNORECASE)
EWKT_PATTERN = re.compile(r"^\s*SRID=(\d+);(.*)$", re.IGNORECASE | re.DOTALL)
WKT_KEYWORDS = ("POINT", "MULTIPOINT", "LINESTRING", "MULTILINESTRING", "POLYGON", "MULTIPOLYGON", "GEOMETRYCOLLECTION")
AOI_SEGMENTS_PER_SIDE = 256
"""Densification of AOI edges before reprojection, in segments per bounding-box side."""
AOI_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_-]+$")
"""What an AOI name (a folder and file-name stem of the products) may hold."""
AOI_DIGEST_CHARS = 16
AOI_NAME_DIGEST_CHARS = 8
ANTIMERIDIAN_LON = 180.0
FULL_TURN_DEG = 360.0
ACCEPTED_FORMS = "a GeoPackage, GeoJSON or Shapefile path or URL, a WKT polygon, or a bbox 'minx,miny,maxx,maxy' in EPSG:4326"


def aoi_label(source: str) -> str:
    """A readable label for the AOI of `source`: the vector file's stem (only letters, digits, '_' and
    '-'), or 'aoi' for a WKT or bbox string."""
    if _is_inline(source):
        return "aoi"
    stem = Path(source.split("?")[0]).stem
    return re.sub(r"[^A-Za-z0-9_-]+", "-", stem).strip("-") or "aoi"


def aoi_digest(aoi: Geometry) -> str:
    """The AOI's identity: a digest of its normalised geometry and CRS, as loaded (no reprojection),
    so the same AOI gives the same digest on every machine and any other AOI another one."""
    normalised = shapely.normalize(aoi.geom)
    crs = crs_of(aoi)
    crs_text = f"EPSG:{crs.epsg}" if crs.epsg else crs.to_wkt()
    return hashlib.sha256(crs_text.encode() + shapely.to_wkb(normalised)).hexdigest()[:AOI_DIGEST_CHARS]


def aoi_name(source: str, aoi: Geometry) -> str:
    """The name of an AOI's output folder and files when none is set: `<label>-<digest>`.

    Two AOI files with the same stem (`farmA/aoi.geojson`, `farmB/aoi.geojson`) get different
    names; the same AOI always gets the same one.
    """
    return f"{aoi_label(source)}-{aoi_digest(aoi)[:AOI_NAME_DIGEST_CHARS]}"


def _is_inline(source: str) -> bool:
    text = source.strip().upper()
    return bool(BBOX_PATTERN.match(source) or EWKT_PATTERN.match(source) or text.startswith(WKT_KEYWORDS))


def load_aoi(source: str) -> Geometry:
    """The AOI of `source` as one polygonal geometry with its CRS.

    `source` is a vector file path or URL (any format GDAL reads, any CRS, all features unioned),
    a WKT polygon (EPSG:4326, or EWKT `SRID=3857;POLYGON(...)`), or a bbox `minx,miny,maxx,maxy`
    in EPSG:4326.
    """
    if BBOX_PATTERN.match(source):
        minx, miny, maxx, maxy = (float(value) for value in source.split(","))
        if not (minx < maxx and miny < maxy):
            raise InvalidAOI(f"bbox {source!r} is empty: give minx,miny,maxx,maxy with min < max")
        if not (-180 <= minx and maxx <= 180 and -90 <= miny and maxy <= 90):
            raise InvalidAOI(
                f"bbox {source!r} is not in degrees of EPSG:4326; give lon/lat, or projected coordinates as EWKT 'SRID=<epsg>;POLYGON(...)'"
            )
        shape, crs = shapely.box(minx, miny, maxx, maxy), WGS84
    elif _is_inline(source):
        shape, crs = _parse_wkt(source)
    else:
        shape, crs = _read_vector_file(source)
    return _checked(shape, crs, source)


def _parse_wkt(source: str) -> tuple[shapely.Geometry, str]:
    ewkt = EWKT_PATTERN.match(source)
    wkt_text, crs = (ewkt.group(2), f"EPSG:{ewkt.group(1)}") if ewkt else (source, WGS84)
    try:
        return shapely.wkt.loads(wkt_text), crs
    except shapely.errors.ShapelyError as error:
        raise InvalidAOI(f"AOI WKT cannot be parsed ({error}); give {ACCEPTED_FORMS}") from None


def _read_vector_file(source: str) -> tuple[shapely.Geometry, Any]:
    import geopandas
    from pyogrio.errors import DataSourceError

    try:
        frame = geopandas.read_file(source)
    except (DataSourceError, OSError, ValueError) as error:
        raise InvalidAOI(f"AOI {source} cannot be read ({first_line(error)}); give {ACCEPTED_FORMS}") from None
    if not isinstance(frame, geopandas.GeoDataFrame):
        raise InvalidAOI(
            f"AOI {source} is a table without a geometry column; save the polygons as GeoPackage or GeoJSON, "
            "or give WKT in EPSG:4326"
        )
    if frame.crs is None:
        raise InvalidAOI(f"AOI {source} has no CRS; save it with one (e.g. as GeoPackage) or give WKT in EPSG:4326")
    geometries = frame.geometry.dropna()
    if geometries.empty:
        raise InvalidAOI(f"AOI {source} holds no geometry; draw at least one polygon")
    invalid = geometries[~geometries.is_valid]
    if not invalid.empty:
        raise InvalidAOI(
            f"AOI {source} has an invalid geometry ({explain_validity(invalid.iloc[0])}); "
            "repair it, e.g. with QGIS 'Fix geometries' or shapely.make_valid"
        )
    return shapely.union_all(geometries.to_numpy()), frame.crs


def _checked(shape: shapely.Geometry, crs: Any, source: str) -> Geometry:
    label = aoi_label(source) if not _is_inline(source) else "AOI"
    where = source if not _is_inline(source) else "given"
    if shape.is_empty:
        raise InvalidAOI(f"{label} {where} is empty; give a polygon with an area")
    if not shape.is_valid:
        raise InvalidAOI(
            f"{label} {where} is invalid ({explain_validity(shape)}); "
            "repair it, e.g. with QGIS 'Fix geometries' or shapely.make_valid"
        )
    polygonal = shapely.get_parts(shape)
    polygonal = [part for part in polygonal if part.geom_type in ("Polygon", "MultiPolygon")]
    if not polygonal or shapely.union_all(polygonal).area == 0:
        raise InvalidAOI(f"{label} {where} has no polygon ({shape.geom_type}); give an area, not points or lines")
    return Geometry(shapely.union_all(polygonal), crs=crs)


def aoi_in_crs(aoi: Geometry, crs: Any, max_segment: float | None = None) -> Geometry:
    """The AOI in `crs`, its edges densified first: a straight edge in one CRS is a curve in another.

    No segment is longer than `max_segment` units of the AOI's CRS (degrees for lon/lat, counted on
    unwrapped longitudes), by default 1/`AOI_SEGMENTS_PER_SIDE` of its larger bounding-box side. Across
    the antimeridian the AOI is unwrapped before it goes to a projected CRS, so it stays one piece; in a
    geographic CRS it is split at lon 180 as RFC 7946 has it (see the module docstring).
    """
    crs = CRS(crs)
    if crs.geographic:
        return split_at_antimeridian(lonlat_unwrapped(aoi, max_segment)).to_crs(crs)
    if aoi.crs == crs:
        return aoi
    source = lonlat_unwrapped(aoi) if crs_of(aoi).geographic else aoi
    return source.to_crs(crs, resolution=max_segment or _default_segment(source))


def footprint_in_crs(footprint: Mapping[str, Any], crs: Any, max_segment_deg: float) -> Geometry:
    """A STAC item footprint (GeoJSON geometry in EPSG:4326, split at lon 180 when it crosses it, as
    RFC 7946 has it) in `crs`, its edges cut into pieces of at most `max_segment_deg` degrees first.

    In a projected CRS the parts on either side of lon 180 are one polygon again (see `aoi_in_crs`).
    """
    return aoi_in_crs(Geometry(footprint, crs=WGS84), crs, max_segment_deg)


def _default_segment(geometry: Geometry) -> float:
    """1/`AOI_SEGMENTS_PER_SIDE` of the larger bounding-box side, in the geometry's CRS units."""
    left, bottom, right, top = geometry.boundingbox
    return max(right - left, top - bottom) / AOI_SEGMENTS_PER_SIDE


def lonlat_unwrapped(geometry: Geometry, max_segment: float | None = None) -> Geometry:
    """`geometry` in lon/lat degrees with continuous longitudes: across lon 180 they run past 180 (or
    below -180) instead of jumping by 360, so the geometry is one piece where it is one piece on Earth.

    A geographic geometry keeps its CRS and vertices; its parts west of lon 0 move east by 360 degrees
    when that narrows its longitude span (an RFC 7946 MultiPolygon split at lon 180 becomes one polygon
    again). Otherwise it is returned as it is. A projected geometry goes to EPSG:4326, its edges
    densified first (segments of at most `max_segment` CRS units, by default 1/`AOI_SEGMENTS_PER_SIDE`
    of its larger bounding-box side), and each vertex takes the longitude within 180 degrees of that of
    its centroid (its centroid in its own CRS).
    """
    if crs_of(geometry).geographic:
        parts = shapely.get_parts(geometry.geom)
        moved = [shapely.affinity.translate(part, FULL_TURN_DEG) if part.centroid.x < 0 else part for part in parts]
        if _longitude_span(moved) < _longitude_span(parts):
            return Geometry(shapely.union_all(moved), crs=geometry.crs)
        return geometry
    (centre_lon,), _ = geometry.centroid.to_crs(WGS84).xy
    lonlat = geometry.to_crs(WGS84, resolution=max_segment or _default_segment(geometry))

    def near_centre(coordinates: np.ndarray) -> np.ndarray:
        longitudes = coordinates[:, 0]
        offset = longitudes - centre_lon
        # Only vertices more than half a turn away move, so a geometry away from lon 180 keeps its exact coordinates.
        turns = np.where(np.abs(offset) > ANTIMERIDIAN_LON, np.round(offset / FULL_TURN_DEG), 0.0)
        return np.column_stack([longitudes - turns * FULL_TURN_DEG, coordinates[:, 1]])

    return Geometry(shapely.transform(lonlat.geom, near_centre), crs=WGS84)


def _longitude_span(parts: np.ndarray | list[shapely.Geometry]) -> float:
    """East-west extent, in degrees, of shapely geometries in lon/lat."""
    bounds = shapely.bounds(np.asarray(parts))
    return float(bounds[:, 2].max() - bounds[:, 0].min())


def lonlat_bbox(lonlat: Geometry) -> list[float]:
    """The [west, south, east, north] bbox of a geometry in lon/lat degrees (split at lon 180 or
    unwrapped), as RFC 7946 and STAC have it: across the antimeridian west is greater than east
    (`[179.985, -17, -179.99, -16.975]`), never the whole band of latitudes from -180 to 180."""
    return _wrapped_bbox(*lonlat_unwrapped(lonlat).boundingbox)


def union_lonlat_bboxes(bboxes: list[list[float]]) -> list[float]:
    """The RFC 7946 bbox covering every RFC 7946 [west, south, east, north] given, across the
    antimeridian too: each is unwrapped (east past 180 where it crosses) and turned by whole turns to
    lie nearest the first, so boxes on either side of lon 180 join over it, not around the world."""
    spans = [(west, east + FULL_TURN_DEG if east < west else east) for west, _, east, _ in bboxes]
    first_centre = sum(spans[0]) / 2
    turned = [
        (west + turns * FULL_TURN_DEG, east + turns * FULL_TURN_DEG)
        for west, east in spans
        for turns in [round((first_centre - (west + east) / 2) / FULL_TURN_DEG)]
    ]
    return _wrapped_bbox(
        min(west for west, _ in turned),
        min(bbox[1] for bbox in bboxes),
        max(east for _, east in turned),
        max(bbox[3] for bbox in bboxes),
    )


def _wrapped_bbox(west: float, south: float, east: float, north: float) -> list[float]:
    """An RFC 7946 bbox from one on unwrapped longitudes (east >= west, either may lie past +-180)."""
    if east - west >= FULL_TURN_DEG:
        return [-ANTIMERIDIAN_LON, south, ANTIMERIDIAN_LON, north]
    return [_wrapped_longitude(west), south, _wrapped_longitude(east), north]


def _wrapped_longitude(longitude: float) -> float:
    """`longitude` moved by whole turns into [-180, 180]; 180 and -180 stay as they are."""
    if -ANTIMERIDIAN_LON <= longitude <= ANTIMERIDIAN_LON:
        return longitude
    return (longitude + ANTIMERIDIAN_LON) % FULL_TURN_DEG - ANTIMERIDIAN_LON


def split_at_antimeridian(lonlat: Geometry) -> Geometry:
    """A polygonal geometry in lon/lat degrees whose longitudes may run past +-180 (see
    `lonlat_unwrapped`) as RFC 7946 has it: cut at the antimeridian, each piece moved by whole turns into
    [-180, 180], a MultiPolygon. A geometry within [-180, 180] is returned as it is.
    """
    left, _, right, _ = lonlat.boundingbox
    if -ANTIMERIDIAN_LON <= left and right <= ANTIMERIDIAN_LON:
        return lonlat
    first_turn = math.floor((left + ANTIMERIDIAN_LON) / FULL_TURN_DEG)
    last_turn = math.floor((right + ANTIMERIDIAN_LON) / FULL_TURN_DEG)
    pieces = []
    for turn in range(first_turn, last_turn + 1):
        offset = turn * FULL_TURN_DEG
        window = shapely.box(offset - ANTIMERIDIAN_LON, -90.0, offset + ANTIMERIDIAN_LON, 90.0)
        inside = shapely.get_parts(shapely.intersection(lonlat.geom, window))
        pieces += [shapely.affinity.translate(piece, -offset) for piece in inside if piece.geom_type == "Polygon"]
    return Geometry(shapely.MultiPolygon(pieces), crs=lonlat.crs)


def lonlat_search_hull(lonlat: Geometry) -> Geometry:
    """The convex hull of a geometry in lon/lat degrees, for a STAC search: taken on unwrapped
    longitudes and split at lon 180 (RFC 7946), so an AOI across the antimeridian never gets a hull
    spanning the globe the other way."""
    return split_at_antimeridian(lonlat_unwrapped(lonlat).convex_hull)


def aoi_centre_lonlat(aoi: Geometry) -> tuple[float, float]:
    """(longitude in [-180, 180), latitude) in degrees of EPSG:4326 of the AOI's true centre: its centroid
    in its own CRS, a geographic AOI's taken on unwrapped longitudes (see `lonlat_unwrapped`)."""
    centroid = lonlat_unwrapped(aoi).centroid if crs_of(aoi).geographic else aoi.centroid
    (longitude,), (latitude,) = centroid.to_crs(WGS84).xy
    return (longitude + ANTIMERIDIAN_LON) % FULL_TURN_DEG - ANTIMERIDIAN_LON, latitude


# rasterize builds an in-memory dataset and silences the warning that it has no geotransform yet with
# `warnings.catch_warnings`, which is not thread-safe: another thread leaving its own restores the
# filters in between, and each scene read of a run logged the warning. The dataset gets `grid`'s transform.
warnings.filterwarnings("ignore", category=NotGeoreferencedWarning, module=r"rasterio\.features")


def aoi_pixel_mask(aoi: Geometry, grid: GeoBox) -> np.ndarray:
    """Boolean (y, x) array on `grid`: True where the pixel centre lies inside the AOI."""
    outline = aoi_in_crs(aoi, grid.crs)
    return geometry_mask(
        [outline.geom], out_shape=grid.shape.yx, transform=grid.affine, invert=True, all_touched=False
    )
