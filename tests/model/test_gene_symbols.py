"""Targets matched to their own genes through a ``var`` column of symbols (``gene_symbols``), as when the genes are
indexed by Ensembl identifiers."""

from __future__ import annotations

import numpy as np
import pytest

from scmech.data._fields import perturbation_state
from scmech.model import SemiMechVI
from scmech.tl import OwnGene, TrainMean, evaluate, split

from .conftest import HELDOUT, simulated, tiny_model_without


def _by_identifier(adata):
    """The same screen with the genes indexed by made-up identifiers and the names kept in ``var["symbol"]``."""
    out = adata.copy()
    out.var["symbol"] = out.var_names.astype(str)
    out.var_names = [f"ENSG{i:011d}" for i in range(out.n_vars)]
    return out


def _trained(adata, **setup):
    SemiMechVI.setup_anndata(adata, batch_key="batch", **setup)
    held = np.flatnonzero(adata.obs["perturbation"].to_numpy() == HELDOUT)
    model, _ = tiny_model_without(adata, held, max_epochs=2)
    return model


def test_a_symbol_column_gives_every_target_its_own_gene_as_var_names_do(tmp_path):
    named = simulated()
    ids = _by_identifier(named)
    by_name = _trained(named)
    by_symbol = _trained(ids, gene_symbols="symbol")
    state = perturbation_state(by_symbol.adata_manager)
    assert state["target_var_index"] == by_name._target_positions(state["targets"]).tolist()
    assert min(state["target_var_index"]) >= 0
    np.testing.assert_array_equal(
        by_symbol.module.decoder.target_gene_index.cpu().numpy(), by_name.module.decoder.target_gene_index.cpu().numpy()
    )
    # the unseen measured target gets its own gene's knock-down, exactly as with gene names as var_names
    conditions = [HELDOUT, "G0008"]
    p_name, p_symbol = by_name.predict(conditions), by_symbol.predict(conditions)
    np.testing.assert_allclose(p_symbol.X, p_name.X, rtol=1e-5, atol=1e-6)
    assert list(p_symbol.var_names) == list(ids.var_names)
    for column in ("unseen_targets", "anchored"):
        assert p_symbol.obs.loc[HELDOUT, column] == p_name.obs.loc[HELDOUT, column]
    own, own_named = by_symbol.get_own_gene_calibration(), by_name.get_own_gene_calibration()
    assert list(own.index) == list(own_named.index) == ["G0008", "G0009", "G0021"]
    assert own.attrs["effect"] == pytest.approx(own_named.attrs["effect"], rel=1e-4)
    # a saved model keeps the column: the loaded one predicts the same
    by_symbol.save(tmp_path / "m", save_anndata=False)
    loaded = SemiMechVI.load(tmp_path / "m", adata=ids)
    np.testing.assert_allclose(loaded.predict(conditions).X, p_symbol.X, rtol=1e-5, atol=1e-6)


def test_without_the_column_a_warning_names_it_and_targets_are_unmeasured():
    ids = _by_identifier(simulated())
    with pytest.warns(UserWarning, match=r"gene_symbols='symbol'"):
        SemiMechVI.setup_anndata(ids, batch_key="batch")
    model = SemiMechVI(ids)
    assert set(perturbation_state(model.adata_manager)["target_var_index"]) == {-1}
    assert set(model._target_positions(perturbation_state(model.adata_manager)["targets"])) == {-1}


def test_a_bad_symbol_column_is_refused_before_anything_is_written():
    ids = _by_identifier(simulated())
    keys = set(ids.obsm) | set(ids.uns)
    with pytest.raises(KeyError, match=r"gene_symbols 'gene_name' is not a column of adata.var .*'symbol'"):
        SemiMechVI.setup_anndata(ids, gene_symbols="gene_name")
    ids.var["number"] = np.arange(ids.n_vars)
    with pytest.raises(TypeError, match=r"gene_symbols 'number': adata.var\['number'\] holds int64 values"):
        SemiMechVI.setup_anndata(ids, gene_symbols="number")
    with pytest.raises(TypeError, match="a string"):
        SemiMechVI.setup_anndata(ids, gene_symbols=["symbol"])
    # a target naming two genes has no single own gene
    symbols = ids.var["symbol"].to_numpy().copy()
    symbols[0] = HELDOUT
    ids.var["symbol"] = symbols
    with pytest.raises(ValueError, match=rf"'{HELDOUT}' at gene positions \[0, 10\].*duplicated"):
        SemiMechVI.setup_anndata(ids, gene_symbols="symbol")
    assert set(ids.obsm) | set(ids.uns) == keys
    # a repeated name that no target carries is fine, and a missing name matches nothing
    symbols[0] = symbols[1]
    ids.var["symbol"] = symbols
    ids.var.loc[ids.var_names[2], "symbol"] = None
    SemiMechVI.setup_anndata(ids, gene_symbols="symbol")


def test_baselines_and_evaluate_match_own_genes_through_the_column():
    named = simulated()
    ids = _by_identifier(named)
    sp = split(named, "perturbation", test_conditions=[HELDOUT])
    preds, off = {}, {}
    for name, adata, setup in (("name", named, {}), ("symbol", ids, {"gene_symbols": "symbol"})):
        OwnGene.setup_anndata(adata, **setup)
        model = OwnGene(adata)
        model.train(datasplitter_kwargs={"external_indexing": sp.external_indexing})
        assert model.own_targets_ == 3
        preds[name] = model.predict(sp.test_conditions)
        # OwnGene is the train mean off its own gene, flat against the Systema reference: score the weighted mean
        TrainMean.setup_anndata(adata, **setup)
        weighted = TrainMean(adata, weighting="precision")
        weighted.train(datasplitter_kwargs={"external_indexing": sp.external_indexing})
        scores = evaluate(weighted.predict(sp.test_conditions), adata, split=sp, **setup)
        off[name] = scores.set_index("metric")["value"]["systema_pearson_delta_off"]
    np.testing.assert_allclose(preds["symbol"].X, preds["name"].X)
    assert np.isfinite(off["name"])
    assert off["symbol"] == pytest.approx(off["name"])
    # without the column evaluate cannot tell the own gene, and keeps it in the off-target score
    with pytest.warns(UserWarning, match="gene_symbols='symbol'"):
        TrainMean.setup_anndata(ids)
    weighted = TrainMean(ids, weighting="precision")
    weighted.train(datasplitter_kwargs={"external_indexing": sp.external_indexing})
    plain = evaluate(weighted.predict(sp.test_conditions), ids, split=sp).set_index("metric")["value"]
    assert plain["systema_pearson_delta_off"] != pytest.approx(off["name"])


def test_split_restricts_to_targets_measured_under_the_column():
    ids = _by_identifier(simulated())
    with pytest.raises(ValueError, match="no perturbation has all its targets"):
        split(ids, "perturbation", restrict_to_measured=True)
    sp = split(ids, "perturbation", restrict_to_measured=True, gene_symbols="symbol", test_size=0.5)
    assert set(sp.test_conditions) <= {"G0008", "G0009", "G0010", "G0021", "G0009+G0021"}
    with pytest.raises(KeyError, match="gene_symbols 'name'"):
        split(ids, "perturbation", gene_symbols="name")


def test_a_mudata_with_labels_in_the_guide_modality_matches_targets_to_the_rna_genes():
    import mudata as md

    from .test_semimechvi import _guide_modality

    rna = _by_identifier(simulated(n_cells=120))
    guide = _guide_modality(rna)
    del rna.obs["perturbation"]
    with md.set_options(pull_on_update=False):
        mdata = md.MuData({"rna": rna, "guide": guide})
    modalities = {"rna_layer": "rna", "perturbation_key": "guide", "batch_key": "rna"}
    SemiMechVI.setup_mudata(mdata, batch_key="batch", gene_symbols="symbol", modalities=modalities)
    model = SemiMechVI(mdata)
    targets = perturbation_state(model.adata_manager)["targets"]
    expected = [list(rna.var["symbol"]).index(t) for t in targets]
    # the knock-down acts on the RNA modality's genes (the guide modality's features are guides, not genes)
    assert model.module.decoder.target_gene_index.tolist() == expected
    with pytest.raises(KeyError, match=r"gene_symbols 'gene' is not a column of mdata\['rna'\]\.var"):
        SemiMechVI.setup_mudata(mdata, batch_key="batch", gene_symbols="gene", modalities=modalities)
