"""Where a month's products are built on local disk before publishing, so a retry finds them.

One folder per AOI, month and inputs: `<staging root>/<aoi name>/<YYYY-MM>/<inputs digest>/`. The
composite's staging rasters and the five products are written there; when both stages are done a
`finished.json` records what they returned. A retried run whose inputs are the same finds that
record and publishes without recomputing; a run with other inputs removes the folder first. The
whole month folder is removed once the products are published.
"""

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from tasks.metadata import ProductNames
from tasks.workspace import Workspace

FINISHED_RECORD = "finished.json"
PRODUCTS_FOLDER = "products"


@dataclass(frozen=True)
class FinishedProducts:
    """What the composite and product stages returned, as the flow needs it to publish and report."""

    names: ProductNames
    valid_share: float
    contributing_scenes: tuple[str, ...]


@dataclass(frozen=True)
class StagedMonth:
    """The staging folder of one AOI, month and inputs digest."""

    root: Path
    aoi_name: str
    month_label: str
    inputs_digest: str

    @property
    def month_folder(self) -> Path:
        return self.root / self.aoi_name / self.month_label

    @property
    def folder(self) -> Path:
        return self.month_folder / self.inputs_digest

    @property
    def mosaic_path(self) -> Path:
        """The composite's staging mosaic (a plain tiled GeoTIFF on the grid)."""
        return self.folder / "mosaic.tif"

    @property
    def count_path(self) -> Path:
        return self.folder / "count.tif"

    @property
    def products(self) -> Workspace:
        """The local workspace the five products are written to."""
        return Workspace(str(self.folder / PRODUCTS_FOLDER))

    def prepare(self) -> FinishedProducts | None:
        """The products a previous attempt finished for these inputs, else None after clearing the month's folder."""
        finished = self._finished()
        if finished is None:
            shutil.rmtree(self.month_folder, ignore_errors=True)
            self.folder.mkdir(parents=True)
        return finished

    def record_finished(self, finished: FinishedProducts) -> None:
        """Note that the products are complete (written last, atomically)."""
        Workspace(str(self.folder)).write_bytes(FINISHED_RECORD, json.dumps(asdict(finished)).encode())

    def remove(self) -> None:
        """Delete the month's staging folder (after publishing)."""
        shutil.rmtree(self.month_folder, ignore_errors=True)

    def _finished(self) -> FinishedProducts | None:
        record = self.folder / FINISHED_RECORD
        if not record.is_file():
            return None
        fields = json.loads(record.read_text())
        names = ProductNames(**fields["names"])
        if not all((self.folder / PRODUCTS_FOLDER / name).is_file() for name in asdict(names).values()):
            return None
        return FinishedProducts(names, fields["valid_share"], tuple(fields["contributing_scenes"]))
