"""Maskers are picked by name from a registry (`tasks.masking.registry`); a new one needs its registration alone."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from prefect.utilities.callables import parameter_schema

from flows.monthly_mosaic import monthly_mosaic
from tasks.core.errors import InvalidSettings
from tasks.core.scene import MaskClass
from tasks.core.settings import MaskSettings
from tasks.masking import registry as maskers
from tasks.masking.registry import BUILTIN_MASKERS, Masker, masker_named, masker_names, register_masker
from tasks.masking.stage import mask_from_bands, mask_halo_px
from tasks.testing.served_month import ServedMonth, flow_settings, serve_synthetic_month
from tasks.testing.servers import S3Server
from tests import REPO_ROOT

TOY_CONTEXT_PX = 7


def nothing_is_cloud(bands: np.ndarray, grid_pixel_m: float, settings: MaskSettings) -> np.ndarray:
    """The toy masker's classes: every pixel clear."""
    return np.full(bands.shape[1:], MaskClass.CLEAR, np.uint8)  # cloud class 0 is clear, as MaskClass


@pytest.fixture
def toy_masker(monkeypatch: pytest.MonkeyPatch) -> Masker:
    """A masker that calls every pixel with data clear and ignores SCL, registered for one test."""
    monkeypatch.setattr(maskers, "_registered", dict(maskers._registered))  # registrations end with the test
    return register_masker(
        Masker(
            "all-clear",
            "every pixel with data is clear",
            nothing_is_cloud,
            uses_scl_invalid=False,
            context_px=lambda settings, grid_pixel_m: TOY_CONTEXT_PX,
        )
    )


def test_the_built_in_maskers_are_registered_by_the_modules_they_name() -> None:
    assert masker_names()[: len(BUILTIN_MASKERS)] == tuple(BUILTIN_MASKERS)
    assert {name: masker_named(name).name for name in BUILTIN_MASKERS} == {name: name for name in BUILTIN_MASKERS}
    assert masker_named("scl").uses_scl_invalid and not masker_named("ocm").uses_scl_invalid


def test_naming_the_maskers_and_the_settings_form_imports_no_model_code() -> None:
    listing = (
        "import sys; from tasks.masking.registry import masker_names; from flows.parameters import MosaicSettings; "
        "names = masker_names(); MosaicSettings.model_json_schema(); "
        "print(len(names), 'torch' in sys.modules, 'tasks.masking.ocm' in sys.modules)"
    )
    listed = subprocess.run([sys.executable, "-c", listing], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert listed.stdout.split() == [str(len(BUILTIN_MASKERS)), "False", "False"], listed.stderr


def test_an_unknown_masker_is_one_line_naming_the_known_ones(toy_masker: Masker) -> None:
    with pytest.raises(InvalidSettings, match=r"unknown masker 'fog'; use one of .*scl.*all-clear"):
        masker_named("fog")
    with pytest.raises(ValueError, match=r"unknown masker 'fog'; use one of .*all-clear"):
        MaskSettings(masker="fog")


def test_a_registered_masker_gives_the_mask_and_the_halo(toy_masker: Masker) -> None:
    settings = MaskSettings(masker="all-clear", buffer_m=20.0)
    bands = np.full((5, 6, 6), 1000, np.uint16)
    bands[4] = 9  # SCL cloud high probability: ignored by this masker
    bands[:4, 0, 0] = 0  # nodata stays nodata
    mask = mask_from_bands(bands, 10.0, settings)
    assert mask[0, 0] == MaskClass.NODATA and (mask.ravel()[1:] == MaskClass.CLEAR).all()
    assert mask_halo_px(settings, 10.0) == TOY_CONTEXT_PX + 2


def count_of(report_urls: dict[str, str]) -> np.ndarray:
    with rasterio.open(report_urls["count"]) as count:
        return count.read(1)


@pytest.mark.slow
def test_the_flow_runs_with_a_masker_added_by_registration_alone(
    toy_masker: Masker, s3_server: S3Server, stac_api_factory, prefect_harness: None, tmp_path: Path
) -> None:
    served: ServedMonth = serve_synthetic_month(s3_server, stac_api_factory, tmp_path, duplicated_dates=())

    with_scl = monthly_mosaic(flow_settings(served, tmp_path / "scl"))
    with_toy = monthly_mosaic(flow_settings(served, tmp_path / "toy", mask={"masker": "all-clear"}))

    scl_count, toy_count = count_of(with_scl.product_urls), count_of(with_toy.product_urls)
    assert with_toy.scenes_used == len(served.item_ids) and not with_toy.failed_scenes
    assert (toy_count >= scl_count).all() and (toy_count > scl_count).any(), "clouds SCL masks count here"
    assert with_toy.valid_share >= with_scl.valid_share


def test_the_prefect_form_offers_every_registered_masker(toy_masker: Masker) -> None:
    schema = parameter_schema(monthly_mosaic.fn).model_dump()
    masker = schema["definitions"]["MaskSettings"]["properties"]["masker"]
    assert masker["enum"] == list(masker_names()) and {"ocm+scl", "ocm", "scl", "all-clear"} <= set(masker["enum"])
