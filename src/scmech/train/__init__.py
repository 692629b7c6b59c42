"""Training plans and minibatch samplers of scmech."""

from ._plan import SemiMechTrainingPlan
from ._sampler import BATCHING, PerturbationBatchSampler, PerturbationDataSplitter

__all__ = ["BATCHING", "PerturbationBatchSampler", "PerturbationDataSplitter", "SemiMechTrainingPlan"]
