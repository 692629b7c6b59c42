"""Torch modules of scmech: measurement operator, latent dynamics and the SemiMechVAE."""

from ._dynamics import FixedPointResult, VectorField
from ._measurement import MeasurementDecoder
from ._neural_field import NeuralField
from ._neural_ode import NeuralODEVAE
from ._semimechvae import SemiMechVAE

__all__ = [
    "FixedPointResult",
    "MeasurementDecoder",
    "NeuralField",
    "NeuralODEVAE",
    "SemiMechVAE",
    "VectorField",
]
