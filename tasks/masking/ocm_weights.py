"""OmniCloudMask weights on disk: where they live, whether they are all there, and fetching them.

Weights are never fetched during a run: a missing file raises `MissingModelWeights` at once, naming
the directory and the files, so an air-gapped run cannot hang on the model hub. Fetch them ahead of
time with `python -m tasks.masking.ocm_weights download-models [--dir D]`. The directory is
`settings.model_dir`, else `$OMNICLOUDMASK_MODEL_DIR`, else the library's own data directory.
"""

import argparse
import csv
import os
import sys
from pathlib import Path

from tasks.core.errors import InvalidSettings, MissingModelWeights, MosaicError, root_cause
from tasks.core.settings import MaskSettings
from tasks.masking.ocm_inference import load_omnicloudmask

__all__ = [
    "MODEL_DIR_ENV",
    "check_model_weights",
    "download_command",
    "download_model_weights",
    "expected_weight_files",
    "main",
    "model_dir_for",
    "model_version_for",
]

MODEL_DIR_ENV = "OMNICLOUDMASK_MODEL_DIR"
MIN_WEIGHTS_BYTES = 1024 * 1024
"""A weights file at most this size is taken as missing (the library's own rule)."""


def model_dir_for(settings: MaskSettings) -> Path:
    """The weights directory: `settings.model_dir`, else $OMNICLOUDMASK_MODEL_DIR, else the library's."""
    configured = settings.model_dir or os.environ.get(MODEL_DIR_ENV)
    if configured:
        return Path(configured)
    return load_omnicloudmask().download_models.get_model_data_dir()


def model_version_for(settings: MaskSettings) -> float:
    """The model version to run: `settings.model_version`, else the library's latest."""
    if settings.model_version is not None:
        return float(settings.model_version)
    return load_omnicloudmask().download_models.get_latest_model_version()


def expected_weight_files(model_version: float) -> list[str]:
    """File names of the weights of `model_version`, from the package's `model_download_links.csv`."""
    index_path = load_omnicloudmask().download_models.model_index_path
    with index_path.open() as index:
        rows = list(csv.DictReader(index))
    names = [row["file_name"] for row in rows if float(row["version"]) == model_version]
    if not names:
        versions = sorted({float(row["version"]) for row in rows})
        raise InvalidSettings(f"OmniCloudMask model_version {model_version} does not exist; use one of {versions}")
    return names


def download_command(model_dir: Path) -> str:
    return f"python -m tasks.masking.ocm_weights download-models --dir {model_dir}"


def check_model_weights(model_dir: Path, model_version: float) -> None:
    """Raise `MissingModelWeights` unless every weights file of the version is in `model_dir` (> 1 MiB)."""
    missing = [
        name
        for name in expected_weight_files(model_version)
        if not ((model_dir / name).is_file() and (model_dir / name).stat().st_size > MIN_WEIGHTS_BYTES)
    ]
    if missing:
        raise MissingModelWeights(
            f"OmniCloudMask v{model_version:g} weights missing in {model_dir}: {', '.join(missing)}; "
            f"fetch them with `{download_command(model_dir)}` (then copy the directory here, or point "
            f"model_dir / ${MODEL_DIR_ENV} at it)"
        )


def download_model_weights(model_dir: Path, model_version: float) -> list[Path]:
    """Fetch the weights of `model_version` into `model_dir` with the library's own downloader."""
    download_models = load_omnicloudmask().download_models
    model_dir.mkdir(parents=True, exist_ok=True)
    try:
        fetched = download_models.get_models(model_dir=model_dir, model_version=model_version)
    except Exception as error:  # the hub client raises many types (HTTP, DNS, offline mode)
        raise MissingModelWeights(
            f"could not download OmniCloudMask v{model_version:g} weights to {model_dir}: {root_cause(error)}; "
            "check the connection to huggingface.co, or copy the files from a machine that has them"
        ) from None
    return [entry["Path"] for entry in fetched]


def main(argv: list[str] | None = None, prog: str = "python -m tasks.masking.ocm_weights") -> int:
    """`python -m tasks.masking.ocm_weights download-models [--dir D] [--model-version V]`."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    download = commands.add_parser("download-models", help="fetch OmniCloudMask weights for offline runs")
    download.add_argument("--dir", help=f"target directory (default: ${MODEL_DIR_ENV}, else the library's)")
    download.add_argument("--model-version", type=float, help="model version (default: the latest)")
    arguments = parser.parse_args(argv)
    settings = MaskSettings(model_dir=arguments.dir, model_version=arguments.model_version)
    try:
        paths = download_model_weights(model_dir_for(settings), model_version_for(settings))
    except MosaicError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
