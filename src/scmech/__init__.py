"""scmech: semi-mechanistic models of CRISPR-perturbation single-cell data for the scverse.

Submodules are imported on first use, so ``import scmech`` (and the ``scmech`` command's ``--help``) stays fast:
``scmech.model`` and ``scmech.tl`` load torch, scvi-tools and Lightning only when touched.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("scmech")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

_SUBMODULES = ("data", "datasets", "model", "module", "pl", "pp", "tl", "train")

__all__ = [*_SUBMODULES, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        module = importlib.import_module(f"{__name__}.{name}")
        globals()[name] = module
        return module
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)


def __dir__() -> list[str]:
    return sorted(__all__)
