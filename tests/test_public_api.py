"""`__all__` of every project module: each listed name exists once, so a rename that forgets it fails here."""

import importlib
import pkgutil
from collections import Counter

import pytest

PACKAGES = ("tasks", "flows", "blocks")


def project_modules() -> list[str]:
    """The dotted names of every package and module under `PACKAGES`."""
    names = list(PACKAGES)
    for package in PACKAGES:
        path = importlib.import_module(package).__path__
        names += [module.name for module in pkgutil.walk_packages(path, f"{package}.")]
    return sorted(names)


@pytest.mark.parametrize("module_name", project_modules())
def test_all_lists_existing_names_once(module_name: str) -> None:
    module = importlib.import_module(module_name)
    public = getattr(module, "__all__", None)
    if public is None:
        pytest.skip(f"{module_name} has no __all__")
    assert all(isinstance(name, str) for name in public), f"{module_name}.__all__ holds a non-string"
    missing = [name for name in public if not hasattr(module, name)]
    assert not missing, f"{module_name}.__all__ names what the module lacks: {missing}"
    repeated = [name for name, count in Counter(public).items() if count > 1]
    assert not repeated, f"{module_name}.__all__ lists twice: {repeated}"
