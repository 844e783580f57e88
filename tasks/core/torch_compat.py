"""Make torchvision importable next to a CPU-only torch; the one place this project patches the stack.

The torchvision wheel we are served (0.28.0) is a CUDA build. With the CPU torch wheel its compiled
operators are absent, and `import torchvision` fails while registering fake (meta) kernels for two
operators it expects the extension to have defined: `operator torchvision::nms does not exist`, then
the same for `qnms`. timm, segmentation-models-pytorch and so OmniCloudMask import torchvision, so
they fail too. None of them call these detection operators; they only need the import to succeed.

`ensure_torchvision_importable()` tries the plain import first and leaves a working install (a real
CUDA machine) untouched. Only when the import fails naming one of the operators below does it
define that operator's schema (no kernel: calling it would still fail loudly) and import again.
"""

import re
import threading
from importlib import import_module

import torch

__all__ = ["ensure_torchvision_importable", "placeholder_operators"]

TORCHVISION_NAMESPACE = "torchvision"

MISSING_OPERATOR = re.compile(r"operator torchvision::(\w+) does not exist")
"""The error torch raises when torchvision registers a kernel for an operator nobody defined."""

PLACEHOLDER_SCHEMAS: dict[str, str] = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
"""Schemas (as in torchvision's csrc) of the only operators torchvision 0.28 needs at import time
without its extension; every other operator's registration is skipped when the extension is absent."""

_placeholder_library: torch.library.Library | None = None
"""Holds the defined schemas: torch removes a library's definitions when the object is collected."""

_placeholders_defined: set[str] = set()
_import_lock = threading.Lock()
"""Two threads must not both define the same placeholder (torch rejects a second definition)."""


def _define_placeholder(operator_name: str) -> None:
    global _placeholder_library
    if _placeholder_library is None:
        _placeholder_library = torch.library.Library(TORCHVISION_NAMESPACE, "DEF")
    _placeholder_library.define(PLACEHOLDER_SCHEMAS[operator_name])
    _placeholders_defined.add(operator_name)


def ensure_torchvision_importable() -> None:
    """Import torchvision, defining the operator schemas a CPU torch lacks only if the import needs them.

    Raises the original import error when it is anything other than a missing operator we know.
    """
    with _import_lock:
        while True:
            try:
                import_module(TORCHVISION_NAMESPACE)
                return
            except RuntimeError as error:
                missing = MISSING_OPERATOR.search(str(error))
                operator_name = missing.group(1) if missing else None
                if operator_name not in PLACEHOLDER_SCHEMAS or operator_name in _placeholders_defined:
                    raise
                _define_placeholder(operator_name)


def placeholder_operators() -> frozenset[str]:
    """The torchvision operators this process defined as placeholders (empty on a full install)."""
    return frozenset(_placeholders_defined)
