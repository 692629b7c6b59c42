"""scmech: semi-mechanistic models of CRISPR-perturbation single-cell data for the scverse."""

from importlib.metadata import PackageNotFoundError, version

from . import data, datasets, model, module, pl, pp, tl

try:
    __version__ = version("scmech")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = ["data", "datasets", "model", "module", "pl", "pp", "tl", "__version__"]
