"""The code version that keys committed tiles covers the pipeline's modules and nothing else."""

from pathlib import Path

from flows.caching import TASKS_PACKAGE, TEST_SUPPORT_FOLDER, code_version, pipeline_sources


def package_with(tmp_path: Path, files: dict[str, str]) -> Path:
    """A throw-away package folder holding {relative path: source}."""
    package = tmp_path / "tasks"
    for name, source in files.items():
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text(source)
    return package


def test_the_code_version_follows_pipeline_code_and_not_test_support(tmp_path: Path) -> None:
    stage = {"tile.py": "STEP = 1\n", f"{TEST_SUPPORT_FOLDER}/fault_proxy.py": "DELAY = 1\n"}
    before = code_version(package_with(tmp_path / "before", stage))

    support_edited = code_version(package_with(tmp_path / "support", stage | {f"{TEST_SUPPORT_FOLDER}/fault_proxy.py": "DELAY = 2\n"}))
    stage_edited = code_version(package_with(tmp_path / "stage", stage | {"tile.py": "STEP = 2\n"}))
    stage_moved = code_version(package_with(tmp_path / "moved", {"tiles.py": "STEP = 1\n"}))

    assert support_edited == before, "editing test support must keep committed tiles"
    assert stage_edited != before and stage_moved != before, "editing or renaming stage code must not"


def test_the_pipeline_sources_are_every_module_of_tasks_but_its_test_support() -> None:
    sources = {path.relative_to(TASKS_PACKAGE).as_posix() for path in pipeline_sources()}
    every_module = {path.relative_to(TASKS_PACKAGE).as_posix() for path in TASKS_PACKAGE.rglob("*.py")}

    assert {"tiling/tile.py", "acquisition/read.py", "compositing/composite.py"} <= sources
    assert sources == {name for name in every_module if not name.startswith(f"{TEST_SUPPORT_FOLDER}/")}
    assert len(sources) < len(every_module), "tasks/testing holds modules"
