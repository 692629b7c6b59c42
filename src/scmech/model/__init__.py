"""Models of scmech with the scvi-tools model API."""

from ._semimechvi import SemiMechVI

__all__ = ["SemiMechVI"]
