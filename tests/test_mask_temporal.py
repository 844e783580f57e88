"""The temporal maskers: each pixel's observations of the month checked against its clear background."""

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from flows.monthly_mosaic import monthly_mosaic
from tasks.core.settings import MaskSettings, TemporalSettings
from tasks.masking import temporal as mask_temporal
from tasks.masking.registry import masker_named
from tasks.masking.temporal import TEMPORAL_BASES, temporal_check, temporal_flags
from tasks.testing.mask_truth import mask_scores
from tasks.testing.served_month import flow_settings, serve_synthetic_month
from tasks.testing.servers import S3Server
from tasks.testing.synthetic import SCL_FILE, SCL_THIN_CIRRUS, full_resolution, make_synthetic_month, synthetic_grid

GROUND_DN = np.array([1800, 1500, 1000, 3200])
"""A clear pixel's red, green, blue and nir."""
DATES = 6
CLOUDY, SHADOWED, FAINT = 1, 3, 4
"""Observations of pixel (0, 0): a thin cloud, a shadow, and one slightly brighter than the ground."""


def stable_stack(pixels: int) -> np.ndarray:
    """`DATES` observations (obs, band, 1, pixels) of `GROUND_DN` with a few DN of date-to-date variation."""
    variation = np.arange(DATES)[:, None, None, None] * 4 - 10
    return (GROUND_DN[None, :, None, None] + variation + np.zeros((1, 1, 1, pixels), int)).astype(np.uint16)


@pytest.fixture
def stack() -> np.ndarray:
    stack = stable_stack(pixels=3)
    stack[CLOUDY, :, 0, 0] = 0.7 * GROUND_DN + 0.3 * np.array([4200, 4300, 4600, 4400])  # thin cloud, opacity 0.3
    stack[SHADOWED, :, 0, 0] = 0.35 * GROUND_DN
    stack[FAINT, :3, 0, 0] += 100  # 0.01 brighter: within the thresholds
    stack[CLOUDY, :, 0, 2] = stack[CLOUDY, :, 0, 0]
    return stack


def test_a_bright_observation_is_cloud_a_dark_nir_one_shadow_and_the_rest_stay(stack: np.ndarray) -> None:
    usable = np.ones((DATES, 1, 3), bool)
    cloud, shadow = temporal_flags(torch.from_numpy(stack), torch.from_numpy(usable), TemporalSettings())

    assert cloud[:, 0, 0].nonzero().flatten().tolist() == [CLOUDY]
    assert shadow[:, 0, 0].nonzero().flatten().tolist() == [SHADOWED]
    assert not cloud[:, 0, 1].any() and not shadow[:, 0, 1].any(), "a stable pixel keeps every observation"
    kept = temporal_check(MaskSettings(masker="scl+temporal"), stack, usable)
    expected = usable.copy()
    expected[[CLOUDY, SHADOWED], 0, 0] = False
    expected[CLOUDY, 0, 2] = False
    np.testing.assert_array_equal(kept, expected)


def test_thresholds_decide_what_is_flagged(stack: np.ndarray) -> None:
    usable = np.ones((DATES, 1, 3), bool)
    strict = MaskSettings(temporal=TemporalSettings(cloud_blue_excess=0.005, cloud_visible_excess=0.005))
    lenient = MaskSettings(temporal=TemporalSettings(cloud_blue_excess=0.2, shadow_nir_ratio=0.2))

    assert not temporal_check(strict, stack, usable)[FAINT, 0, 0]
    assert temporal_check(lenient, stack, usable)[:, 0, 0].all()


def test_pixels_with_too_few_usable_observations_and_unusable_ones_are_left_alone(stack: np.ndarray) -> None:
    usable = np.ones((DATES, 1, 3), bool)
    usable[:, 0, 2] = False
    usable[CLOUDY, 0, 2] = usable[0, 0, 2] = True  # two usable observations, one of them cloudy
    usable[0, 0, 0] = False
    settings = MaskSettings(temporal=TemporalSettings(min_observations=3))

    kept = temporal_check(settings, stack, usable)

    np.testing.assert_array_equal(kept[:, 0, 2], usable[:, 0, 2])
    assert not kept[0, 0, 0], "the check never makes an observation usable"
    assert temporal_check(MaskSettings(), stack, usable)[:, 0, 2].tolist() == [True] + [False] * (DATES - 1)


def test_the_check_in_strips_of_rows_equals_the_check_of_the_whole_block(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(1)
    stack = stable_stack(pixels=7).repeat(5, axis=2)
    bright = rng.random((DATES, 5, 7)) < 0.2
    stack[:, :3] += (bright * rng.integers(0, 1500, (DATES, 5, 7))).astype(np.uint16)[:, None]
    usable = rng.random((DATES, 5, 7)) < 0.8
    cloud, shadow = temporal_flags(torch.from_numpy(stack), torch.from_numpy(usable), TemporalSettings())
    monkeypatch.setattr(mask_temporal, "CHUNK_OBSERVATIONS", 2 * DATES * 7)  # strips of 2 rows

    kept = temporal_check(MaskSettings(), stack, usable)

    assert cloud.any() and (usable & ~cloud.numpy()).any()
    np.testing.assert_array_equal(kept, usable & ~cloud.numpy() & ~shadow.numpy())


def test_each_temporal_masker_is_its_base_with_the_stack_check() -> None:
    for base_name in TEMPORAL_BASES:
        base, temporal = masker_named(base_name), masker_named(f"{base_name}+temporal")
        assert base.stack_check is None and temporal.stack_check is temporal_check
        assert (temporal.cloud_classes, temporal.context_px, temporal.check_ready, temporal.uses_scl_invalid) == (
            base.cloud_classes, base.context_px, base.check_ready, base.uses_scl_invalid
        )  # fmt: skip


def scl_on_grid(folder: Path, item_id: str, shape: tuple[int, int]) -> np.ndarray:
    with rasterio.open(folder / item_id / f"{SCL_FILE}.tif") as dataset:
        return full_resolution(dataset.read(1), shape)


def test_the_synthetic_scl_misses_the_faintest_share_of_thin_cloud(tmp_path: Path) -> None:
    grid = synthetic_grid(shape=(128, 128), resolution=20.0)
    share = 0.4
    missing = make_synthetic_month(tmp_path / "missing", grid=grid, seed=4, scl_missed_thin_share=share)
    complete = make_synthetic_month(tmp_path / "complete", grid=grid, seed=4)

    for item in missing.items:
        item_id = item["id"]
        thin = missing.thin_mask[item_id]
        scl = scl_on_grid(tmp_path / "missing", item_id, grid.shape.yx)
        cirrus = scl == SCL_THIN_CIRRUS
        complete_scl = scl_on_grid(tmp_path / "complete", item_id, grid.shape.yx)
        np.testing.assert_array_equal(missing.clear_mask[item_id], complete.clear_mask[item_id])
        assert (complete_scl[thin] == SCL_THIN_CIRRUS).all() and not cirrus[~thin].any()
        missed = thin & ~cirrus
        assert missed.sum() == pytest.approx(share * thin.sum(), rel=0.1)
        assert not np.isin(scl[missed], MaskSettings().scl_invalid_classes).any(), "missed: classed as ground"
        with rasterio.open(tmp_path / "missing" / item_id / "B02.tif") as dataset:
            blue = dataset.read(1).astype(float)
        assert blue[missed].mean() < blue[cirrus].mean(), "the SCL misses the faintest thin cloud"


@pytest.mark.slow
def test_scl_with_the_temporal_check_counts_more_pixels_exactly_than_scl(
    s3_server: S3Server, stac_api_factory, prefect_harness: None, tmp_path: Path
) -> None:
    served = serve_synthetic_month(s3_server, stac_api_factory, tmp_path, duplicated_dates=(), scl_missed_thin_share=0.5)
    scores = {}
    for masker in ("scl", "scl+temporal"):
        report = monthly_mosaic(flow_settings(served, tmp_path / masker, mask={"masker": masker}))
        assert report.scenes_used == len(served.item_ids) and not report.failed_scenes
        scores[masker] = mask_scores(served.month, served.item_ids, report.product_urls, str(served.aoi_path))

    assert scores["scl+temporal"].count_exact > scores["scl"].count_exact
    assert scores["scl+temporal"].count_exact >= 0.9
    assert scores["scl+temporal"].mae_dn < scores["scl"].mae_dn
