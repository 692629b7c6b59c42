"""The ``genes`` selection of ``get_regulatory_network``: empty, duplicated and target-free selections."""

from __future__ import annotations

import warnings

import pandas as pd
import pytest
import scvi

from scmech.model import SemiMechVI

from .conftest import MODEL_KWARGS, TRAIN_KWARGS, simulated

#: registered targets of the small simulated screen (seed 0)
TARGETS = ["G0008", "G0009", "G0010", "G0021"]


@pytest.fixture(scope="module")
def model() -> SemiMechVI:
    adata = simulated(n_cells=120)
    SemiMechVI.setup_anndata(adata, batch_key="batch")
    scvi.settings.seed = 0
    model = SemiMechVI(adata, **MODEL_KWARGS)
    model.train(max_epochs=1, **TRAIN_KWARGS)
    return model


@pytest.mark.parametrize("kind", ["jacobian", "response", "intervention"])
def test_empty_gene_list_is_refused(model, kind):
    with pytest.raises(ValueError, match=r"genes=\[\] selects no gene; pass genes=None for every gene"):
        model.get_regulatory_network(kind=kind, genes=[])


@pytest.mark.parametrize("kind", ["jacobian", "intervention"])
def test_duplicated_genes_are_refused(model, kind):
    with pytest.raises(ValueError, match=r"genes holds \['G0008'\] more than once; give each gene once"):
        model.get_regulatory_network(kind=kind, genes=["G0008", "G0002", "G0008"])


def test_unknown_gene_is_refused_by_name(model):
    with pytest.raises(KeyError, match=r"genes holds \['NOT_A_GENE'\], which are not in the model's genes"):
        model.get_regulatory_network(genes=["G0001", "NOT_A_GENE"])


def test_intervention_without_a_target_among_the_genes_warns(model):
    with pytest.warns(UserWarning, match=r"genes=\['G0002'\] holds no registered target.*'G0008'"):
        net = model.get_regulatory_network(kind="intervention", genes=["G0002"])
    assert net.shape == (1, 0)
    assert list(net.index) == ["G0002"]
    with pytest.warns(UserWarning, match="holds no registered target"):
        edges = model.get_regulatory_network(kind="intervention", genes=["G0002"], top_k=3)
    assert edges.empty


def test_intervention_with_a_target_among_the_genes(model):
    full = model.get_regulatory_network(kind="intervention")
    assert list(full.columns) == TARGETS
    genes = ["G0002", "G0021", "G0008"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a selection with targets does not warn
        sub = model.get_regulatory_network(kind="intervention", genes=genes)
    assert list(sub.index) == genes
    assert list(sub.columns) == ["G0021", "G0008"]
    pd.testing.assert_frame_equal(sub, full.loc[genes, ["G0021", "G0008"]])


def test_gene_selection_keeps_the_given_order(model):
    full = model.get_regulatory_network()
    genes = ["G0005", "G0001", "G0003"]
    sub = model.get_regulatory_network(genes=genes)
    assert sub.shape == (3, 3)
    pd.testing.assert_frame_equal(sub, full.loc[genes, genes])
