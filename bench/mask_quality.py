"""Benchmark of mask quality (issue 11): `scl` against `scl+temporal` on a month whose SCL misses faint thin cloud.

A synthetic month (`tasks/testing/synthetic.py`: procedural surface, 6 dates, `--size`^2 px of 20 m, thick cloud
5-55 % and thin cloud 8 % of each date) is written with `scl_missed_thin_share`: the SCL classes the faintest
`--missed-share` of each date's thin-cloud pixels as ground, as the real SCL misses faint cirrus. The real
`monthly_mosaic` flow runs on it once per masker, in this process, on a throw-away Prefect API
(`prefect_test_harness`), its items read from a local item collection (`SearchSettings.item_collection_path`).

Each run's products are scored (`tasks.testing.mask_truth`) against what a perfect mask would give:
- count exact: share of AOI pixels whose count band equals the number of truly clear observations;
- MAE DN: mean absolute difference, all bands, between the mosaic and the composite's percentile of the truly
  clear observations (not the surface `truth`, so the dates' jitter, which no mask can remove, is left out).

The default seed (2026) differs from the one the `TemporalSettings` defaults were chosen on (11). Speed is not
measured here: the check costs about one more percentile pass per composite block.
Run: `.venv/bin/python bench/mask_quality.py` (about 20 s on 2 cores). The last line is
`count_exact_scl=<f> count_exact_scl_temporal=<f> mae_dn_scl=<f> mae_dn_scl_temporal=<f>`.
"""

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run as `python bench/mask_quality.py`: make `tasks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from prefect.testing.utilities import prefect_test_harness

from flows.embedded_api import STARTUP_TIMEOUT_S
from flows.monthly_mosaic import monthly_mosaic
from flows.parameters import MosaicSettings
from tasks.testing.mask_truth import MaskScores, mask_scores
from tasks.testing.synthetic import SyntheticMonth, make_synthetic_month, synthetic_grid, write_aoi

MASKERS = ("scl", "scl+temporal")
RESOLUTION_M = 20.0
AOI_INSET_PX = 16


def write_month(folder: Path, size: int, seed: int, missed_share: float) -> tuple[SyntheticMonth, Path, Path]:
    """The month's COGs, its item collection and its AOI under `folder`."""
    grid = synthetic_grid(shape=(size, size), resolution=RESOLUTION_M)
    month = make_synthetic_month(folder / "scenes", grid=grid, seed=seed, scl_missed_thin_share=missed_share)
    items = folder / "items.json"
    items.write_text(json.dumps({"type": "FeatureCollection", "features": month.items}))
    return month, items, write_aoi(grid, folder / "aoi.geojson", inset_px=AOI_INSET_PX)


def run_masker(month: SyntheticMonth, items: Path, aoi: Path, masker: str, folder: Path) -> MaskScores:
    """Scores of the flow's products with `masker`."""
    settings = MosaicSettings.model_validate(
        {
            "aoi": str(aoi),
            "month": f"{month.dates[0]:%Y-%m}",
            "grid": {"resolution_m": RESOLUTION_M},
            "search": {"item_collection_path": str(items), "max_cloud_cover": 95},
            "mask": {"masker": masker},
            "workspace": str(folder / "workspace"),
            "output_dir": str(folder / "output"),
        }
    )
    report = monthly_mosaic(settings)
    if report.failed_scenes or report.scenes_used != len(month.items):
        raise RuntimeError(f"{masker}: {report.scenes_used} of {len(month.items)} scenes used, failed {report.failed_scenes}")
    item_ids = [item["id"] for item in month.items]
    return mask_scores(month, item_ids, report.product_urls, str(aoi), settings.composite.percentile)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="grid edge in 20 m pixels")
    parser.add_argument("--seed", type=int, default=2026, help="synthetic month seed")
    parser.add_argument("--missed-share", type=float, default=0.5, help="share of thin cloud the SCL misses")
    arguments = parser.parse_args()

    with (
        tempfile.TemporaryDirectory(prefix="mask_quality_") as scratch,
        prefect_test_harness(server_startup_timeout=STARTUP_TIMEOUT_S),
    ):
        folder = Path(scratch)
        month, items, aoi = write_month(folder, arguments.size, arguments.seed, arguments.missed_share)
        print(f"month: {len(month.items)} dates, {arguments.size}x{arguments.size} px of {RESOLUTION_M:g} m, "
              f"seed {arguments.seed}, SCL misses the faintest {arguments.missed_share:.0%} of thin cloud")  # fmt: skip
        scores = {}
        for masker in MASKERS:
            scores[masker] = run_masker(month, items, aoi, masker, folder / masker.replace("+", "_"))
            print(f"{masker:>13}: count exact {scores[masker].count_exact:.4f}, MAE {scores[masker].mae_dn:.2f} DN")
    scl, temporal = scores["scl"], scores["scl+temporal"]
    inexact_ratio = (1 - temporal.count_exact) / max(1 - scl.count_exact, 1e-12)
    print(f"scl+temporal / scl: inexact counts x{inexact_ratio:.3f}, MAE x{temporal.mae_dn / max(scl.mae_dn, 1e-12):.3f}")
    print(f"count_exact_scl={scl.count_exact:.4f} count_exact_scl_temporal={temporal.count_exact:.4f} "
          f"mae_dn_scl={scl.mae_dn:.3f} mae_dn_scl_temporal={temporal.mae_dn:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
