"""The CRS of an odc-geo grid or geometry (which odc-geo types as optional), and its name in products.

Every grid (`tasks.geometry.grid`) and AOI (`tasks.geometry.aoi`) of this project has a CRS; `crs_of` says so once.
"""

from odc.geo import CRS
from odc.geo.geobox import GeoBoxBase
from odc.geo.geom import Geometry

__all__ = ["crs_code", "crs_of"]


def crs_of(located: GeoBoxBase | Geometry) -> CRS:
    """The CRS of a grid or geometry; ValueError for one without (a programming error, never user input)."""
    if located.crs is None:
        raise ValueError(f"this {type(located).__name__} has no CRS; build grids and geometries with one")
    return located.crs


def crs_code(crs: CRS) -> str | None:
    """'EPSG:<code>' when the CRS has an EPSG code, else None (name it by its WKT then)."""
    return f"EPSG:{crs.epsg}" if crs.epsg else None
