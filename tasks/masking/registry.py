"""The maskers a run can pick by name (`mask.masker`), and how to add one.

A masker turns a scene window's bands into cloud and shadow classes (`tasks.masking.rules`: 0 clear,
1 thick cloud, 2 thin cloud, 3 shadow) on the window's pixels. `tasks.masking.stage` does the rest for every
masker alike: the nodata edge, the buffer in metres, and SCL's invalid classes when the masker asks
for them. A masker may also check each pixel's observations of the month together (`stack_check`),
which the composite applies block by block (`tasks.compositing.composite.composite_tile`'s `refine_usable`). Adding one is a module that builds a `Masker` and calls `register_masker` on import, plus its
name and module in `BUILTIN_MASKERS` (built-in) or an import of it before the run (your own code).
Listing the names imports no masker: a built-in masker's module (torch and the model, for OmniCloudMask)
is imported when the masker is first looked up.
"""

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from tasks.core.errors import InvalidSettings

if TYPE_CHECKING:
    from tasks.core.settings import MaskSettings

__all__ = ["BUILTIN_MASKERS", "Masker", "masker_named", "masker_names", "register_masker"]

BUILTIN_MASKERS: dict[str, str] = {
    "scl": "tasks.masking.scl",
    "ocm+scl": "tasks.masking.ocm",
    "ocm": "tasks.masking.ocm",
    "scl+temporal": "tasks.masking.temporal",
    "ocm+scl+temporal": "tasks.masking.temporal",
    "ocm+temporal": "tasks.masking.temporal",
}
"""The built-in maskers' names, and the module that registers each on import (on its first lookup);
`tasks.masking.temporal` wraps the others."""


def no_context_px(settings: "MaskSettings", grid_pixel_m: float) -> int:
    return 0


def always_ready(settings: "MaskSettings") -> None:
    return None


@dataclass(frozen=True)
class Masker:
    """A named way to find clouds and shadows in a scene window.

    `cloud_classes(bands, grid_pixel_m, settings)`: classes (uint8, y, x) of a window's bands
    (`tasks.core.scene.SCENE_BANDS`, y, x, DN; 0 is nodata) on a grid of `grid_pixel_m` metres.
    `uses_scl_invalid`: SCL's `scl_invalid_classes` also mark pixels unusable.
    `context_px(settings, grid_pixel_m)`: grid pixels of context the masker needs around a tile for the
    tile's classes not to depend on where tiles are cut (the buffer is added by `tasks.masking.stage`).
    `check_ready(settings)`: raises a one-line `MosaicError` before any scene is read when the masker
    cannot run (missing weights, say).
    `stack_check(settings, stack, usable)`: None, or a check of a block's observations of the month
    together: stack (obs, band, y, x) uint16 (`tasks.core.scene.REFLECTANCE_BANDS`, DN; 0 nodata) and
    usable (obs, y, x) bool (clear in the windows' masks) give usable with the observations it finds
    cloudy or shadowed set False; it never makes an observation usable. Per pixel, so blocks may cut
    the tile anywhere. Settings first: `functools.partial(stack_check, settings)` is the composite's
    `refine_usable`.
    """

    name: str
    description: str
    cloud_classes: Callable[[np.ndarray, float, "MaskSettings"], np.ndarray]
    uses_scl_invalid: bool = True
    context_px: Callable[["MaskSettings", float], int] = no_context_px
    check_ready: Callable[["MaskSettings"], None] = always_ready
    stack_check: Callable[["MaskSettings", np.ndarray, np.ndarray], np.ndarray] | None = None


_registered: dict[str, Masker] = {}


def register_masker(masker: Masker) -> Masker:
    """Make `masker` selectable as `mask.masker: <name>`; a second masker of the same name replaces it."""
    _registered[masker.name] = masker
    return masker


def masker_names() -> tuple[str, ...]:
    """The names of the built-in maskers, then of those registered since; imports no masker."""
    return tuple(dict.fromkeys([*BUILTIN_MASKERS, *_registered]))


def masker_named(name: str) -> Masker:
    """The masker registered as `name`, a built-in one imported first; `InvalidSettings` naming the known
    ones otherwise."""
    if name not in _registered and name in BUILTIN_MASKERS:
        importlib.import_module(BUILTIN_MASKERS[name])
    try:
        return _registered[name]
    except KeyError:
        raise InvalidSettings(
            f"unknown masker {name!r}; use one of {', '.join(masker_names())} (or register yours with "
            "tasks.masking.registry.register_masker)"
        ) from None
