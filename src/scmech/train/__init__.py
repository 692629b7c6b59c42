"""Training plans and minibatch samplers of scmech."""

from ._plan import SemiMechTrainingPlan

__all__ = ["SemiMechTrainingPlan"]
