"""Torch modules of scmech: measurement operator, latent dynamics and the SemiMechVAE."""

from ._dynamics import FixedPointResult, VectorField
from ._measurement import MeasurementDecoder
from ._semimechvae import SemiMechVAE

__all__ = ["FixedPointResult", "MeasurementDecoder", "SemiMechVAE", "VectorField"]
