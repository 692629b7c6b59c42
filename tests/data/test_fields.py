from __future__ import annotations

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scvi.data import AnnDataManager
from scvi.data.fields import LayerField

from scmech._constants import SCMECH_ADATA_KEYS
from scmech.data import (
    EfficacyField,
    MuDataPerturbationField,
    MuDataTimeField,
    PerturbationField,
    TimeField,
)


def _adata():
    obs = pd.DataFrame(
        {
            "pert": ["A", "B", "NT", "A+B", "NT", "unassigned"],
            "day": [1.0, 1.0, 1.0, 2.0, 2.0, 2.0],
            "eff": [0.9, 0.5, 0.0, 1.0, 0.0, 0.0],
        },
        index=[f"c{i}" for i in range(6)],
    )
    var = pd.DataFrame(index=["A", "g1", "g2"])
    return ad.AnnData(X=sp.csr_matrix(np.arange(18, dtype=np.float32).reshape(6, 3)), obs=obs, var=var)


def _manager(adata):
    fields = [
        LayerField("X", None, is_count_data=True),
        PerturbationField("perturbation", "pert", control_label="NT"),
        TimeField("day"),
        EfficacyField("eff"),
    ]
    mgr = AnnDataManager(fields=fields)
    mgr.register_fields(adata)
    return mgr


def test_perturbation_field_registers_multihot_and_state():
    adata = _adata()
    obs_before = adata.obs.copy()
    mgr = _manager(adata)
    pd.testing.assert_frame_equal(adata.obs, obs_before)  # no obs column written
    # the targets of each cell (positions in the target list, -1 padding): the multi-hot rows
    # [[1, 0], [0, 1], [0, 0], [1, 1], [0, 0], [0, 0]] in compact form
    mat = adata.obsm[SCMECH_ADATA_KEYS.PERTURBATION_OBSM]
    np.testing.assert_array_equal(mat, [[0, -1], [1, -1], [-1, -1], [0, 1], [-1, -1], [-1, -1]])
    state = mgr.get_state_registry("perturbation")
    assert list(state["targets"]) == ["A", "B"]
    assert list(state["conditions"]) == ["NT", "A", "A+B", "B"]
    assert list(state["target_var_index"]) == [0, -1]
    assert state["n_cells_per_condition"]["unassigned"] == 1
    assert mgr.summary_stats["n_targets"] == 2
    assert mgr.summary_stats["n_perturbations"] == 3
    tensor = mgr.get_from_registry("perturbation")
    assert tensor.shape == (6, 2)
    np.testing.assert_array_equal(mgr.get_from_registry("time").ravel(), adata.obs["day"].to_numpy())
    mgr.view_registry()  # renders without error


def test_transfer_keeps_targets_and_rejects_unknown():
    adata = _adata()
    mgr = _manager(adata)
    query = _adata()[[0, 2]].copy()
    qm = mgr.transfer_fields(query)
    assert list(qm.get_state_registry("perturbation")["targets"]) == ["A", "B"]
    # positions in the source's target list (A is 0); the query's cells carry at most one target
    np.testing.assert_array_equal(query.obsm[SCMECH_ADATA_KEYS.PERTURBATION_OBSM], [[0], [-1]])
    bad = _adata()
    bad.obs["pert"] = ["C", "A", "NT", "NT", "NT", "NT"]
    with pytest.raises(ValueError, match=r"target\(s\) \['C'\]"):
        mgr.transfer_fields(bad)


@pytest.mark.parametrize(
    ("column", "value", "err", "match"),
    [
        ("day", -1.0, ValueError, "negative time"),
        ("day", np.nan, ValueError, "NaN or infinite time"),
        ("eff", 1.5, ValueError, "outside"),
        ("pert", "A+A", ValueError, "more than once"),
    ],
)
def test_field_validation_errors(column, value, err, match):
    adata = _adata()
    adata.obs[column] = adata.obs[column].astype(object)
    adata.obs.iloc[0, adata.obs.columns.get_loc(column)] = value
    if column != "pert":
        adata.obs[column] = adata.obs[column].astype(float)
    with pytest.raises(err, match=match):
        _manager(adata)


def test_missing_perturbation_key():
    adata = _adata()
    mgr = AnnDataManager(fields=[PerturbationField("perturbation", "nope")])
    with pytest.raises(KeyError, match="perturbation_key 'nope' is not a column"):
        mgr.register_fields(adata)


def test_mudata_fields():
    rna = _adata()
    guide = ad.AnnData(X=np.ones((6, 2), dtype=np.float32), obs=pd.DataFrame(index=rna.obs_names))
    with md.set_options(pull_on_update=False):
        mdata = md.MuData({"rna": rna, "guide": guide})
    mgr = AnnDataManager(
        fields=[
            MuDataPerturbationField("perturbation", "pert", mod_key="rna"),
            MuDataTimeField("day", mod_key="rna"),
        ]
    )
    mgr.register_fields(mdata)
    assert list(mgr.get_state_registry("perturbation")["targets"]) == ["A", "B"]
