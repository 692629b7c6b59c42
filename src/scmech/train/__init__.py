"""Training plans and minibatch samplers of scmech."""

from ._plan import SemiMechTrainingPlan
from ._runner import CheckpointSafeTrainRunner
from ._sampler import BATCHING, PerturbationBatchSampler, PerturbationDataSplitter

__all__ = [
    "BATCHING",
    "CheckpointSafeTrainRunner",
    "PerturbationBatchSampler",
    "PerturbationDataSplitter",
    "SemiMechTrainingPlan",
]
