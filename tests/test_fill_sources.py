"""Which published months may fill a month's gaps (tasks.gap_fill.sources), on local month folders."""

import json
from pathlib import Path

import pytest

from blocks.publish import MonthDestination, month_destination
from tasks.core.month import Month
from tasks.gap_fill.fill import FillMethod
from tasks.gap_fill.sources import MonthFill, neighbour_months
from tasks.geometry.grid import grid_metadata
from tasks.products.metadata import ProductNames
from tasks.testing.synthetic import synthetic_grid

AOI = "fields"
MONTH = Month(2024, 6)
GRID = synthetic_grid(shape=(64, 64), resolution=20.0)
OTHER_GRID = synthetic_grid(shape=(64, 64), resolution=10.0)


def publish_metadata(output_dir: Path, month: Month, grid_document: dict, **extra: object) -> None:
    """A month folder holding only its metadata.json (what `neighbour_months` reads)."""
    destination = month_destination(None, AOI, month.label, output_dir)
    names = ProductNames.for_run(AOI, month)
    document = {"grid": grid_document, "files": {"mosaic": names.mosaic, "count": names.count}, **extra}
    local = output_dir / f"{month.label}.json"
    local.write_text(json.dumps(document))
    destination.put({names.metadata: local})


def neighbours_of(output_dir: Path, method: FillMethod = "interpolate", max_months: int = 3) -> dict[int, str]:
    def destination_of(month: Month) -> MonthDestination:
        return month_destination(None, AOI, month.label, output_dir)

    found = neighbour_months(destination_of, AOI, MONTH, GRID, method, max_months)
    return {neighbour.offset: neighbour.month for neighbour in found}


@pytest.fixture
def output_dir(tmp_path: Path) -> Path:
    grid_document = json.loads(json.dumps(grid_metadata(GRID)))
    for offset in (-4, -2, -1, 1, 3):
        publish_metadata(tmp_path, MONTH.shifted(offset), grid_document)
    publish_metadata(tmp_path, MONTH.shifted(2), json.loads(json.dumps(grid_metadata(OTHER_GRID))))
    return tmp_path


def test_published_months_on_the_same_grid_within_reach_are_found_nearest_first(output_dir: Path) -> None:
    assert list(neighbours_of(output_dir).items()) == [(-1, "2024-05"), (1, "2024-07"), (-2, "2024-04"), (3, "2024-09")]


def test_previous_looks_back_only_and_none_nowhere(output_dir: Path) -> None:
    assert neighbours_of(output_dir, "previous", max_months=4) == {-1: "2024-05", -2: "2024-04", -4: "2024-02"}
    assert neighbours_of(output_dir, "none") == {}


def test_a_neighbours_version_follows_what_it_observed_not_its_own_fill(tmp_path: Path) -> None:
    grid_document = json.loads(json.dumps(grid_metadata(GRID)))

    def version(**extra: object) -> str:
        publish_metadata(tmp_path, MONTH.shifted(-1), grid_document, **extra)
        return MonthFill("previous", 1, tuple(neighbour_months(
            lambda month: month_destination(None, AOI, month.label, tmp_path), AOI, MONTH, GRID, "previous", 1
        ))).digest

    first = version(scenes_used=[{"id": "a"}], fill={"filled_pixels": 10})
    assert version(scenes_used=[{"id": "a"}], fill={"filled_pixels": 99}) == first, "a neighbour's refill changes nothing"
    assert version(scenes_used=[{"id": "a"}, {"id": "b"}], fill={"filled_pixels": 10}) != first
