"""The mosaic index of a tiled month: a GDAL VRT that opens its tile COGs as one raster on the grid.

The VRT lies in the month folder and names each tile by its path relative to itself
(`tiles/<stem>_<tile>_mosaic.tif`), so the folder can be copied anywhere (local, S3, HTTP) and GDAL,
QGIS and titiler still open it. A tile named by an absolute path (`/data/...`, `/vsis3/...`) is taken
as it is: the month stage builds its single COGs from such a copy of the index in its scratch folder,
before the index itself is published. Each source declares its size, type and block size, so opening the
VRT opens no tile; a read opens only the tiles under its window, and a reduced-resolution read uses
the tiles' internal overviews.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from xml.etree import ElementTree

from odc.geo.geobox import GeoBox

from tasks.geometry.crs import crs_of
from tasks.products.cog import COG_BLOCK_SIZE

__all__ = ["IndexBand", "IndexTile", "mosaic_index_xml"]

GDAL_DATA_TYPES = {"uint8": "Byte", "uint16": "UInt16", "int16": "Int16"}


@dataclass(frozen=True)
class IndexBand:
    """One band of the index: its description, and nodata, scale and offset as in the tiles."""

    description: str
    nodata: int | None = None
    scale: float | None = None
    offset: float | None = None


@dataclass(frozen=True)
class IndexTile:
    """One tile COG: its path relative to the VRT (or an absolute one) and where it lies in the grid, in pixels."""

    path: str
    row_offset: int
    col_offset: int
    height: int
    width: int


def mosaic_index_xml(grid: GeoBox, dtype: str, bands: Sequence[IndexBand], tiles: Sequence[IndexTile]) -> str:
    """The VRT XML of `tiles` (each holding `bands` of `dtype`) placed on `grid`."""
    dataset = ElementTree.Element("VRTDataset", rasterXSize=str(grid.shape.x), rasterYSize=str(grid.shape.y))
    ElementTree.SubElement(dataset, "SRS", dataAxisToSRSAxisMapping="1,2").text = crs_of(grid).to_wkt()
    ElementTree.SubElement(dataset, "GeoTransform").text = ", ".join(f"{value:.17g}" for value in grid.affine.to_gdal())
    data_type = GDAL_DATA_TYPES[dtype]
    for band_number, band in enumerate(bands, start=1):
        band_element = ElementTree.SubElement(dataset, "VRTRasterBand", dataType=data_type, band=str(band_number))
        ElementTree.SubElement(band_element, "Description").text = band.description
        if band.nodata is not None:
            ElementTree.SubElement(band_element, "NoDataValue").text = str(band.nodata)
        if band.offset is not None:
            ElementTree.SubElement(band_element, "Offset").text = repr(band.offset)
        if band.scale is not None:
            ElementTree.SubElement(band_element, "Scale").text = repr(band.scale)
        for tile in tiles:
            _add_source(band_element, tile, band_number, data_type)
    ElementTree.indent(dataset)
    return ElementTree.tostring(dataset, encoding="unicode") + "\n"


def _add_source(band_element: ElementTree.Element, tile: IndexTile, band_number: int, data_type: str) -> None:
    source = ElementTree.SubElement(band_element, "SimpleSource")
    relative = "0" if PurePosixPath(tile.path).is_absolute() else "1"
    ElementTree.SubElement(source, "SourceFilename", relativeToVRT=relative).text = tile.path
    ElementTree.SubElement(source, "SourceBand").text = str(band_number)
    block = str(COG_BLOCK_SIZE)
    ElementTree.SubElement(
        source,
        "SourceProperties",
        RasterXSize=str(tile.width),
        RasterYSize=str(tile.height),
        DataType=data_type,
        BlockXSize=block,
        BlockYSize=block,
    )
    size = {"xSize": str(tile.width), "ySize": str(tile.height)}
    ElementTree.SubElement(source, "SrcRect", {"xOff": "0", "yOff": "0", **size})
    ElementTree.SubElement(source, "DstRect", {"xOff": str(tile.col_offset), "yOff": str(tile.row_offset), **size})
