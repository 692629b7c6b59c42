"""Models of scmech with the scvi-tools model API."""

# scvi-tools 1.4.2 prints setups with rich.pretty without importing that submodule (AttributeError in
# view_anndata_setup and view_setup_method_args); importing it here makes those scvi-tools methods work
import rich.pretty

from ._neural_ode import NeuralODE
from ._semimechvi import SemiMechVI

__all__ = ["NeuralODE", "SemiMechVI"]
