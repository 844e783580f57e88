"""What identifies a run's intermediate files, so a re-run finds its committed tiles and nothing else's.

A run's workspace folder is keyed on the AOI, grid, read and mask settings (`scene_folder_digest`);
below it each month's tile records are keyed on the found items, the settings that shape products
and the code (`tiles_digest`). A re-run with the same digests skips every committed tile; any change
(a new scene in the search, another percentile, edited stage code) gives a new folder, so a record
never describes another version of its tile.
"""

import hashlib
from functools import cache
from pathlib import Path

from odc.geo.geobox import GeoBox
from odc.geo.geom import Geometry

from flows.parameters import MosaicSettings
from tasks.core.settings import MaskSettings, ReadSettings
from tasks.geometry.aoi import WGS84
from tasks.geometry.grid import grid_key
from tasks.storage.workspace import content_digest

__all__ = ["scene_folder_digest", "tiles_digest"]

TASKS_PACKAGE = Path(__file__).resolve().parents[1] / "tasks"
TEST_SUPPORT_FOLDER = "testing"
"""The folder of `tasks/` holding the servers and synthetic months that tests and benchmarks share: not
pipeline code, so editing it (a fault proxy, a test server) keeps committed tiles."""
SETTINGS_NOT_SHAPING_TILES = {"runner", "slack_block", "staging_dir", "fill", "fill_max_months"}
"""Settings a re-run may change and still reuse committed tiles: where work runs, who hears of it, and how
gaps are filled (a committed tile is refilled from its observations, `tasks.tiling.tile.refill_tile`). (How the
month is judged is part of the digest: a month judged unpublishable removes its tiles.)"""


def pipeline_sources(package: Path = TASKS_PACKAGE) -> list[Path]:
    """The stage code's modules below `package`, in a stable order: all but the test support."""
    return sorted(
        source for source in package.rglob("*.py") if source.relative_to(package).parts[0] != TEST_SUPPORT_FOLDER
    )


@cache
def code_version(package: Path = TASKS_PACKAGE) -> str:
    """A digest of the stage code (`pipeline_sources`): any change to it invalidates committed tiles."""
    digest = hashlib.sha256()
    for source in pipeline_sources(package):
        digest.update(source.relative_to(package).as_posix().encode())
        digest.update(source.read_bytes())
    return digest.hexdigest()[:16]


def scene_folder_digest(aoi: Geometry, grid: GeoBox, read: ReadSettings, mask: MaskSettings) -> str:
    """A short digest of the AOI, grid, read and mask settings: the run's workspace folder."""
    return content_digest("scenes", aoi.to_crs(WGS84).wkt, grid_key(grid), read.model_dump_json(), mask.model_dump_json())


def tiles_digest(settings: MosaicSettings, month_label: str, items_digest: str) -> str:
    """A short digest of everything that shapes a month's tiles: the items found, the settings
    (but `SETTINGS_NOT_SHAPING_TILES`) and the code."""
    return content_digest(
        "tiles", month_label, items_digest, settings.model_dump_json(exclude=SETTINGS_NOT_SHAPING_TILES), code_version()
    )
