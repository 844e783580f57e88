"""Tests of masking: torchvision shim, mask rules, OmniCloudMask runs offline, the halo a tile reads for its mask."""

import subprocess
import sys
from datetime import date
from pathlib import Path

import numpy as np
import pytest
from odc.geo.geobox import GeoBox

from bench.mask import write_random_weights
from tasks.acquisition.read import read_scene_window
from tasks.acquisition.search import scene_from_item
from tasks.core import torch_compat
from tasks.core.errors import InvalidSettings, MissingModelWeights
from tasks.core.scene import MaskClass
from tasks.core.settings import MaskSettings, ReadSettings
from tasks.geometry.grid import pixel_size_m
from tasks.geometry.tiles import OutputTile, read_grid, tile_grid, tile_layout
from tasks.masking import ocm as mask_ocm
from tasks.masking import ocm_weights
from tasks.masking.ocm_inference import PatchBatcher, load_omnicloudmask
from tasks.masking.ocm_weights import check_model_weights, expected_weight_files, model_dir_for
from tasks.masking.rules import (
    SclClass,
    average_down,
    buffer_cloud_and_shadow,
    classes_from_scl,
    combine_classes,
    dilate_disk,
    downsample_factor,
    scl_invalid,
    upsample_nearest,
)
from tasks.masking.stage import mask_from_bands, mask_halo_px
from tasks.testing.synthetic import make_synthetic_month, synthetic_grid
from tests import REPO_ROOT

MODEL_VERSION = 4.0
SMALL_PATCHES = {"patch_size": 128, "patch_overlap": 32, "batch_size": 2}
DEFAULT_INVALID = MaskSettings().scl_invalid_classes
ALL_SCL_CLASSES = np.array(list(SclClass), dtype=np.uint16)


# --- fixtures and helpers ----------------------------------------------------------------------


@pytest.fixture(scope="session")
def random_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Randomly initialised v4 weights under their real file names: the real loading path, offline."""
    model_dir = tmp_path_factory.mktemp("ocm_weights")
    write_random_weights(model_dir, MODEL_VERSION)
    return model_dir


def scene_grid(shape: tuple[int, int] = (256, 256), resolution: float = 10.0) -> GeoBox:
    return synthetic_grid(shape=shape, resolution=resolution, origin=(500_000.0, 4_002_560.0))


def random_bands(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """Five uint16 bands in SCENE_BANDS order: reflectance 1..9000 and SCL classes 0..11."""
    rng = np.random.default_rng(seed)
    reflectance = rng.integers(1, 9000, size=(4, *shape), dtype=np.uint16)
    scl = rng.integers(0, 12, size=(1, *shape), dtype=np.uint16)
    return np.concatenate([reflectance, scl])


def settings_for(model_dir: Path, **overrides: object) -> MaskSettings:
    return MaskSettings(model_dir=str(model_dir), device="cpu", **{**SMALL_PATCHES, **overrides})


# --- torchvision compatibility -----------------------------------------------------------------


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_compat_makes_torchvision_and_omnicloudmask_importable():
    plain = run_python("import torchvision")
    patched = run_python(
        "from tasks.core.torch_compat import ensure_torchvision_importable, placeholder_operators\n"
        "ensure_torchvision_importable()\n"
        "import torchvision, timm, omnicloudmask\n"
        "print(','.join(sorted(placeholder_operators())))"
    )
    assert patched.returncode == 0, patched.stderr[-2000:]
    placeholders = set(filter(None, patched.stdout.strip().split(",")))
    if plain.returncode == 0:
        assert placeholders == set()
    else:
        assert "torchvision::nms does not exist" in plain.stderr
        assert placeholders == {"nms", "qnms"}


def test_compat_does_nothing_when_torchvision_imports(monkeypatch: pytest.MonkeyPatch):
    imported = []
    monkeypatch.setattr(torch_compat, "import_module", imported.append)
    before = torch_compat.placeholder_operators()
    torch_compat.ensure_torchvision_importable()
    assert imported == ["torchvision"]
    assert torch_compat.placeholder_operators() == before


@pytest.mark.parametrize(
    "message", ["operator torchvision::roi_align does not exist", "CUDA driver version is insufficient"]
)
def test_compat_reraises_other_import_errors(monkeypatch: pytest.MonkeyPatch, message: str):
    def failing_import(name: str) -> None:
        raise RuntimeError(message)

    monkeypatch.setattr(torch_compat, "import_module", failing_import)
    with pytest.raises(RuntimeError, match=message):
        torch_compat.ensure_torchvision_importable()


# --- mask rules on hand-made arrays ------------------------------------------------------------


def test_every_scl_class_under_ocm_plus_scl_with_clear_model():
    scl = ALL_SCL_CLASSES
    mask = combine_classes(np.zeros(scl.shape, np.uint8), scl_invalid(scl, DEFAULT_INVALID), np.ones(scl.shape, bool))
    expected = [MaskClass.INVALID_SCL if value in DEFAULT_INVALID else MaskClass.CLEAR for value in range(12)]
    assert mask.tolist() == expected
    kept = {SclClass.DARK_AREA, SclClass.UNCLASSIFIED, SclClass.VEGETATION, SclClass.NOT_VEGETATED, SclClass.WATER}
    assert {int(value) for value in scl[mask == MaskClass.CLEAR]} == kept


def test_every_scl_class_under_scl_masker():
    scl = ALL_SCL_CLASSES
    classes = classes_from_scl(scl, DEFAULT_INVALID)
    mask = combine_classes(classes, scl_invalid(scl, DEFAULT_INVALID), np.ones(scl.shape, bool))
    expected = {
        0: MaskClass.INVALID_SCL, 1: MaskClass.INVALID_SCL, 2: MaskClass.CLEAR, 3: MaskClass.CLOUD_SHADOW,
        4: MaskClass.CLEAR, 5: MaskClass.CLEAR, 6: MaskClass.CLEAR, 7: MaskClass.CLEAR,
        8: MaskClass.THICK_CLOUD, 9: MaskClass.THICK_CLOUD, 10: MaskClass.THIN_CLOUD, 11: MaskClass.INVALID_SCL,
    }  # fmt: skip
    assert dict(enumerate(mask.tolist())) == expected


def test_scl_class_left_out_of_invalid_set_is_clear():
    scl = ALL_SCL_CLASSES
    without_cirrus = tuple(value for value in DEFAULT_INVALID if value != SclClass.THIN_CIRRUS)
    classes = classes_from_scl(scl, without_cirrus)
    assert classes[SclClass.THIN_CIRRUS] == MaskClass.CLEAR
    assert classes[SclClass.CLOUD_HIGH_PROBABILITY] == MaskClass.THICK_CLOUD


def test_precedence_nodata_then_model_then_scl():
    model = np.array([[1, 2, 3, 0, 3, 0]], np.uint8)
    invalid = np.array([[True, True, True, True, False, False]])
    data = np.array([[True, True, True, True, False, True]])
    assert combine_classes(model, invalid, data).tolist() == [[1, 2, 3, 4, 5, 0]]
    assert combine_classes(model, None, data).tolist() == [[1, 2, 3, 0, 5, 0]]


def test_nodata_edges_from_any_empty_band():
    bands = random_bands((40, 50))
    bands[:, :3, :] = 0
    bands[2, :, -4:] = 0
    mask = mask_from_bands(bands, 10.0, MaskSettings(masker="scl"))
    assert np.all(mask[:3, :] == MaskClass.NODATA) and np.all(mask[:, -4:] == MaskClass.NODATA)
    assert not np.any(mask[3:, :-4] == MaskClass.NODATA)


def test_dilate_disk_matches_euclidean_distance():
    rng = np.random.default_rng(3)
    region = rng.random((60, 70)) > 0.995
    radius = 4.6
    rows, cols = np.indices(region.shape)
    seeds = np.argwhere(region)
    distance = np.min(np.hypot(rows[..., None] - seeds[:, 0], cols[..., None] - seeds[:, 1]), axis=-1)
    assert np.array_equal(dilate_disk(region, radius), distance <= radius)


def test_buffer_takes_source_class_and_never_overrides_nodata():
    classes = np.zeros((21, 21), np.uint8)
    classes[10, 5] = MaskClass.THICK_CLOUD
    classes[10, 8] = MaskClass.CLOUD_SHADOW
    buffered = buffer_cloud_and_shadow(classes, 2.0)
    assert buffered[10, 8] == MaskClass.CLOUD_SHADOW  # detected pixels keep their class
    assert buffered[10, 7] == MaskClass.THICK_CLOUD  # thick buffer beats shadow buffer
    assert buffered[10, 10] == MaskClass.CLOUD_SHADOW and buffered[10, 11] == MaskClass.CLEAR
    assert buffered[8, 5] == MaskClass.THICK_CLOUD and buffered[8, 4] == MaskClass.CLEAR  # (2,1) is beyond 2 px
    data = np.ones(classes.shape, bool)
    data[10, 9] = False
    assert combine_classes(buffered, None, data)[10, 9] == MaskClass.NODATA


def test_buffer_in_metres_through_mask_from_bands():
    bands = random_bands((30, 30))
    bands[4] = SclClass.VEGETATION
    bands[4, 15, 15] = SclClass.CLOUD_HIGH_PROBABILITY
    mask = mask_from_bands(bands, 10.0, MaskSettings(masker="scl", buffer_m=30.0))
    assert np.count_nonzero(mask == MaskClass.THICK_CLOUD) == 29  # pixels within 3 px of the centre


@pytest.mark.parametrize(
    ("grid_m", "mask_m", "factor"), [(10, 20, 2), (10, 10, 1), (5, 20, 4), (20, 20, 1), (30, 20, 1), (15, 20, 1)]
)
def test_downsample_factor(grid_m: float, mask_m: int, factor: int):
    assert downsample_factor(grid_m, mask_m) == factor


def test_average_down_ignores_nodata_and_upsample_restores_shape():
    bands = np.array([[[4, 0, 8], [2, 2, 0], [0, 0, 6]]], np.uint16)
    averaged = average_down(bands, 2)
    assert averaged.shape == (1, 2, 2) and np.allclose(averaged, [[[8 / 3, 8.0], [0.0, 6.0]]])
    assert upsample_nearest(np.arange(4).reshape(2, 2), 2, (3, 3)).tolist() == [[0, 0, 1], [0, 0, 1], [2, 2, 3]]


# --- OmniCloudMask with random weights (offline, the real loading path) ------------------------


def test_model_mask_of_a_window_is_on_its_pixels(random_model_dir: Path):
    bands = random_bands(scene_grid().shape.yx)
    bands[:, :, :20] = 0
    mask = mask_from_bands(bands, 10.0, settings_for(random_model_dir))
    assert mask.shape == bands.shape[1:] and mask.dtype == np.uint8
    assert set(np.unique(mask)) <= set(MaskClass)
    assert np.all(mask[:, :20] == MaskClass.NODATA) and not np.any(mask[:, 20:] == MaskClass.NODATA)
    invalid = scl_invalid(bands[4], DEFAULT_INVALID)
    assert np.all(mask[:, 20:][invalid[:, 20:]] != MaskClass.CLEAR)


def spy_on_model_input(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, ...]]:
    real_predict = PatchBatcher.predict
    shapes: list[tuple[int, ...]] = []

    def spy(batcher: PatchBatcher, red_green_nir: np.ndarray, *options: int) -> np.ndarray:
        shapes.append(red_green_nir.shape)
        return real_predict(batcher, red_green_nir, *options)

    monkeypatch.setattr(PatchBatcher, "predict", spy)
    return shapes


def test_20m_mode_runs_on_averaged_input_and_returns_grid_shape(monkeypatch: pytest.MonkeyPatch, random_model_dir: Path):
    shapes = spy_on_model_input(monkeypatch)
    bands = random_bands((130, 97))
    mask = mask_from_bands(bands, 10.0, settings_for(random_model_dir, resolution_m=20, masker="ocm"))
    assert shapes == [(3, 65, 49)]
    assert mask.shape == (130, 97) and mask.dtype == np.uint8
    assert set(np.unique(mask)) <= {0, 1, 2, 3}


def test_small_scene_is_padded_to_model_minimum(monkeypatch: pytest.MonkeyPatch, random_model_dir: Path):
    shapes = spy_on_model_input(monkeypatch)
    mask = mask_from_bands(random_bands((12, 90)), 10.0, settings_for(random_model_dir, masker="ocm"))
    assert shapes == [(3, 32, 90)] and mask.shape == (12, 90)


def test_all_nodata_scene_skips_the_model(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setattr(mask_ocm, "predict_cloud_classes", pytest.fail)
    mask = mask_from_bands(np.zeros((5, 40, 40), np.uint16), 10.0, settings_for(tmp_path))
    assert np.all(mask == MaskClass.NODATA)


# --- weights -----------------------------------------------------------------------------------


def test_missing_weights_named_before_any_download(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setattr(mask_ocm, "patch_batcher", pytest.fail)
    names = expected_weight_files(MODEL_VERSION)
    (tmp_path / names[0]).write_bytes(b"\0" * 1024)  # an interrupted download is not a weights file
    with pytest.raises(MissingModelWeights) as raised:
        mask_from_bands(random_bands((64, 64)), 10.0, settings_for(tmp_path))
    message = str(raised.value)
    assert "\n" not in message and str(tmp_path) in message
    assert all(name in message for name in names)
    assert f"python -m tasks.masking.ocm_weights download-models --dir {tmp_path}" in message


def test_unknown_model_version_is_one_line_error(tmp_path: Path):
    with pytest.raises(InvalidSettings, match=r"model_version 9.0 does not exist; use one of \[1.0, 2.0, 3.0, 4.0\]"):
        mask_from_bands(random_bands((64, 64)), 10.0, settings_for(tmp_path, model_version=9.0))


def test_the_weights_are_checked_once_per_process_not_per_window(monkeypatch: pytest.MonkeyPatch, random_model_dir: Path):
    checks: list[Path] = []
    monkeypatch.setattr(mask_ocm, "check_model_weights", lambda model_dir, version: checks.append(model_dir))
    mask_ocm.weights_checked.cache_clear()
    for _ in range(3):
        mask_from_bands(random_bands((64, 64)), 10.0, settings_for(random_model_dir, masker="ocm"))
    mask_ocm.weights_checked.cache_clear()  # the next test sees the real check again

    assert checks == [random_model_dir]


def test_present_weights_pass_the_check_and_each_is_needed(random_model_dir: Path, tmp_path: Path):
    check_model_weights(random_model_dir, MODEL_VERSION)
    names = expected_weight_files(MODEL_VERSION)
    for index, left_out in enumerate(names):
        model_dir = tmp_path / f"without-{index}"
        model_dir.mkdir()
        for name in set(names) - {left_out}:
            (model_dir / name).symlink_to(random_model_dir / name)
        with pytest.raises(MissingModelWeights) as raised:
            check_model_weights(model_dir, MODEL_VERSION)
        assert f"weights missing in {model_dir}: {left_out};" in str(raised.value)


def test_model_dir_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv(ocm_weights.MODEL_DIR_ENV, str(tmp_path))
    assert model_dir_for(MaskSettings()) == tmp_path
    assert model_dir_for(MaskSettings(model_dir="/elsewhere")) == Path("/elsewhere")


def test_download_failure_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture):
    def offline(**options: object) -> None:
        try:
            raise OSError("[Errno -2] Name or service not known")
        except OSError as dns_error:
            raise ValueError("Force download failed due to the above error.") from dns_error

    monkeypatch.setattr(load_omnicloudmask().download_models, "get_models", offline)
    assert ocm_weights.main(["download-models", "--dir", str(tmp_path / "weights")]) == 1
    error_line = capsys.readouterr().err.strip()
    assert "\n" not in error_line and "Name or service not known" in error_line
    assert str(tmp_path / "weights") in error_line


# --- SCL masker over a synthetic month ---------------------------------------------------------


def test_scl_masker_finds_synthetic_clouds_and_shadows(tmp_path: Path):
    grid = synthetic_grid(shape=(256, 256), resolution=60.0)
    month = make_synthetic_month(tmp_path / "cogs", dates=(date(2020, 3, 5), date(2020, 3, 20)), grid=grid, partial_dates=(date(2020, 3, 20),))
    for item in month.items:
        window = read_scene_window(scene_from_item(item), grid, grid.extent, ReadSettings())
        mask = np.full(grid.shape.yx, MaskClass.NODATA, np.uint8)  # a partial scene's window stops at its swath
        mask[grid.overlap_roi(window.grid)] = mask_from_bands(window.bands, pixel_size_m(grid), MaskSettings(masker="scl"))
        item_id = item["id"]
        sky = month.cloud_mask[item_id] | month.thin_mask[item_id] | month.shadow_mask[item_id]
        assert sky.sum() > 1000
        assert np.count_nonzero(np.isin(mask[sky], (1, 2, 3))) >= 0.95 * sky.sum()
        assert np.all(mask[~month.data_mask[item_id]] == MaskClass.NODATA)
        assert np.count_nonzero(mask[month.clear_mask[item_id]] == MaskClass.CLEAR) > 0.9 * month.clear_mask[item_id].sum()


# --- the halo a tile reads around itself for its mask ------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "grid_m", "halo_px"),
    [
        ({"masker": "ocm+scl"}, 10.0, 300),  # patch_overlap model pixels, the model on the grid itself
        ({"masker": "ocm", "resolution_m": 20}, 10.0, 600),  # model pixels are 2 grid pixels
        ({"masker": "ocm+scl", "resolution_m": 20, "patch_overlap": 64}, 5.0, 256),  # ... or 4
        ({"masker": "ocm+scl", "resolution_m": 20}, 30.0, 300),  # a coarser grid: the model runs on it
        ({"masker": "ocm+scl", "buffer_m": 100.0}, 10.0, 310),  # plus the buffer
        ({"masker": "ocm", "resolution_m": 20, "patch_overlap": 0, "buffer_m": 60.0}, 20.0, 3),
        ({"masker": "scl"}, 10.0, 0),  # SCL is per pixel: no context
        ({"masker": "scl", "buffer_m": 30.0}, 10.0, 3),  # only the buffer
        ({"masker": "scl", "buffer_m": 25.0}, 10.0, 3),  # a part pixel of buffer needs a whole pixel of halo
    ],
)
def test_mask_halo_px(overrides: dict[str, object], grid_m: float, halo_px: int):
    assert mask_halo_px(MaskSettings(**overrides), grid_m) == halo_px


def tiled_mask(bands: np.ndarray, grid: GeoBox, tile_size_px: int, halo_px: int, settings: MaskSettings) -> np.ndarray:
    """The mask of `bands` on `grid` made tile by tile, as the tile task makes it: each tile's window
    with its halo (cut by the grid, as the scene's data is) masked, then cropped to the tile."""
    mask = np.full(grid.shape.yx, 255, np.uint8)
    for row, col in np.ndindex(*tile_layout(grid, tile_size_px).shape.yx):
        tile_box = tile_grid(grid, tile_size_px, OutputTile(row, col))
        window_roi = grid.overlap_roi(read_grid(tile_box, halo_px))
        window_mask = mask_from_bands(bands[(slice(None), *window_roi)], pixel_size_m(grid), settings)
        mask[grid.overlap_roi(tile_box)] = window_mask[grid[window_roi].overlap_roi(tile_box)]
    return mask


@pytest.mark.parametrize("buffer_m", [30.0, 25.0])
def test_scl_mask_made_tile_by_tile_with_its_halo_equals_the_whole_scenes(buffer_m: float):
    grid = scene_grid((200, 200))
    bands = random_bands(grid.shape.yx, seed=5)
    bands[4] = np.where(np.random.default_rng(5).random(grid.shape.yx) < 0.003, SclClass.CLOUD_HIGH_PROBABILITY, SclClass.VEGETATION)
    settings = MaskSettings(masker="scl", buffer_m=buffer_m)
    whole = mask_from_bands(bands, pixel_size_m(grid), settings)
    assert np.count_nonzero(whole == MaskClass.THICK_CLOUD) > 20 * np.count_nonzero(bands[4] == SclClass.CLOUD_HIGH_PROBABILITY)
    np.testing.assert_array_equal(tiled_mask(bands, grid, 64, mask_halo_px(settings, pixel_size_m(grid)), settings), whole)
    # Without the halo a cloud near a tile's edge would not buffer into the next tile.
    assert (tiled_mask(bands, grid, 64, 0, settings) != whole).any()


def test_buffer_wider_than_a_thin_scene_covers_it() -> None:
    thin_scene = np.zeros((5, 40), dtype=bool)
    thin_scene[2, 20] = True
    grown = dilate_disk(thin_scene, radius_px=8)
    assert grown.shape == thin_scene.shape
    assert grown[:, 20].all() and grown[2, 12:29].all() and not grown[2, :11].any()
