"""Experimental design of Perturb-seq screens: parsing, registration fields, pseudobulks and a simulator."""

from ._design import (
    ExperimentalDesign,
    PerturbationDesign,
    canonical_label,
    get_design,
    parse_condition,
    parse_perturbations,
    validate_categorical,
    validate_efficacy,
    validate_time,
)
from ._fields import (
    EfficacyField,
    MediaTimeField,
    MuDataEfficacyField,
    MuDataMediaTimeField,
    MuDataPerturbationField,
    MuDataTimeField,
    PerturbationField,
    TimeField,
)
from ._pseudobulk import pseudobulk
from ._simulate import SimulatedNetwork, simulate_perturbseq, simulation_group_keys

__all__ = [
    "EfficacyField",
    "ExperimentalDesign",
    "MediaTimeField",
    "MuDataEfficacyField",
    "MuDataMediaTimeField",
    "MuDataPerturbationField",
    "MuDataTimeField",
    "PerturbationDesign",
    "PerturbationField",
    "SimulatedNetwork",
    "TimeField",
    "canonical_label",
    "get_design",
    "parse_condition",
    "parse_perturbations",
    "pseudobulk",
    "simulate_perturbseq",
    "simulation_group_keys",
    "validate_categorical",
    "validate_efficacy",
    "validate_time",
]
