"""`make demo`: the real monthly flow on a synthetic cloudy month, with no network and no data.

It writes six cloudy dates of Earth Search style COGs and items over a procedural surface, then
runs `monthly_mosaic` on them through a local ItemCollection, with Prefect's embedded defaults (an
ephemeral API on SQLite), a local workspace and local output. OmniCloudMask is used when its
weights are present or can be fetched; otherwise the SCL masker, said in one line.
"""

import json
import sys
from pathlib import Path

from flows.monthly_mosaic import monthly_mosaic
from flows.parameters import MosaicSettings
from flows.run import print_report, reporting_failures
from tasks.core.errors import MissingModelWeights
from tasks.core.settings import GridSettings, MaskSettings, SearchSettings
from tasks.masking.ocm_weights import (
    check_model_weights,
    download_command,
    download_model_weights,
    model_dir_for,
    model_version_for,
)
from tasks.testing.synthetic import DEFAULT_DATES, make_synthetic_month, synthetic_grid, write_aoi

__all__ = ["main"]

DEMO_ROOT = Path("workspace")
DEMO_DATA = DEMO_ROOT / "demo-month"
OUTPUT_DIR = Path("output")
DEMO_MONTH = f"{DEFAULT_DATES[0]:%Y-%m}"
DEMO_GRID = synthetic_grid(shape=(512, 512), resolution=20.0)
"""10.24 km x 10.24 km of 20 m pixels in EPSG:32633: small enough for a CPU in a minute or two."""
AOI_INSET = 0.1
"""The AOI is the grid's extent less this share on every side."""


def write_demo_inputs() -> tuple[Path, Path]:
    """Write the synthetic month and its AOI; return (item collection path, AOI path)."""
    DEMO_DATA.mkdir(parents=True, exist_ok=True)
    month = make_synthetic_month(DEMO_DATA, grid=DEMO_GRID, duplicated_dates=DEFAULT_DATES[1:2], seed=7)
    item_collection = DEMO_DATA / "items.json"
    item_collection.write_text(json.dumps({"type": "FeatureCollection", "features": list(month.items)}))
    aoi_path = write_aoi(DEMO_GRID, DEMO_DATA / "demo_aoi.geojson", inset_px=round(AOI_INSET * DEMO_GRID.shape.x))
    return item_collection, aoi_path


def demo_masker() -> MaskSettings:
    """OmniCloudMask + SCL when the weights are present or can be fetched, else SCL alone."""
    ocm = MaskSettings(masker="ocm+scl")
    model_dir, model_version = model_dir_for(ocm), model_version_for(ocm)
    try:
        check_model_weights(model_dir, model_version)
        return ocm
    except MissingModelWeights:
        pass
    try:
        download_model_weights(model_dir, model_version)
    except MissingModelWeights:
        print(
            f"OmniCloudMask weights are not in {model_dir} and cannot be fetched: masking with SCL only. "
            f"Fetch them with `{download_command(model_dir)}` to use the model."
        )
        return MaskSettings(masker="scl")
    return ocm


def run_demo() -> int:
    """Write the demo month, run the flow on it, print where everything is."""
    item_collection, aoi_path = write_demo_inputs()
    settings = MosaicSettings(
        aoi=str(aoi_path),
        month=DEMO_MONTH,
        grid=GridSettings(resolution_m=20.0),
        search=SearchSettings(item_collection_path=str(item_collection), max_cloud_cover=90),
        mask=demo_masker(),
        workspace=str(DEMO_ROOT),
        output_dir=str(OUTPUT_DIR),
    )
    print_report(monthly_mosaic(settings))
    print(
        "\nBrowse the run in the Prefect UI: `.venv/bin/prefect server start`, then open http://127.0.0.1:4200 "
        "(runs of the embedded API are kept in ~/.prefect)."
    )
    return 0


def main() -> int:
    return reporting_failures(run_demo, "demo", debug=False)


if __name__ == "__main__":
    sys.exit(main())
