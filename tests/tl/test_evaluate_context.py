"""Predictions made in a context (time, medium, batch) are scored against the cells observed in that context."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pandas as pd
import pytest

import scmech
from scmech import tl

KEYS = {"perturbation_key": "perturbation", "control_label": "NT"}
TRAIN = ["G0009", "G0010"]


@pytest.fixture(scope="module")
def course():
    """A small simulated time course (days 0.5, 1, 2, 4) and a train mean fitted on it."""
    a = scmech.data.simulate_perturbseq(
        n_cells=900, n_genes=30, n_perturbations=4, n_combinations=0, seed=0, regime="dynamic"
    )
    a.obs = a.obs.drop(columns=["media", "media_time"])
    tl.TrainMean.setup_anndata(a, **KEYS, batch_key="batch", time_key="time")
    model = tl.TrainMean(a)
    model.train()
    return a, model


def _scores(pred, adata, **kwargs) -> pd.DataFrame:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = tl.evaluate(pred, adata, **KEYS, train_conditions=TRAIN, **kwargs)
    return out.set_index(["condition", "metric"]).sort_index()


def test_prediction_at_a_time_is_scored_against_that_time(course):
    a, model = course
    pred = model.predict(["G0008"], time=0.5)
    day = a[a.obs["time"] == 0.5].copy()
    here, alone = _scores(pred, a), _scores(pred, day)
    n_day = int((day.obs["perturbation"] == "G0008").sum())
    assert (here["n_cells"] == n_day).all()
    assert n_day < int((a.obs["perturbation"] == "G0008").sum())
    np.testing.assert_allclose(here["value"].to_numpy(), alone["value"].to_numpy(), equal_nan=True)
    # the pooled score (the condition's cells over every day) differs
    pooled = pred.copy()
    pooled.obs["time"] = np.nan
    assert not np.allclose(_scores(pooled, a)["value"].to_numpy(), here["value"].to_numpy(), equal_nan=True)


def test_prediction_at_an_unobserved_time_is_refused(course):
    a, model = course
    pred = model.predict(["G0008"], time=4.0)
    pred.obs["time"] = 30.0  # e.g. a dynamic model's extrapolation beyond the observed days
    with pytest.raises(ValueError, match=r"No cell of adata has time = 30\.0 .*holds \[0\.5, 1\.0, 2\.0, 4\.0\]"):
        _scores(pred, a)


def test_predictions_in_several_contexts_are_refused(course):
    a, model = course
    pred = model.predict(["G0008", "G0021"], time=[0.5, 1.0])
    with pytest.raises(ValueError, match=r"several values of obs\['time'\] \(\[0\.5, 1\.0\]\); evaluate one context"):
        _scores(pred, a)
    # as the message says: one context at a time
    assert len(_scores(pred[pred.obs["time"] == 0.5], a))


def test_context_column_from_the_argument_when_the_provenance_has_none(course):
    a, model = course
    pred = model.predict(["G0008"], time=0.5)
    pred.uns = {}
    with pytest.raises(ValueError, match=r"made at time = 0\.5.*pass time_key="):
        _scores(pred, a)
    renamed = a.copy()
    renamed.obs = renamed.obs.rename(columns={"time": "day"})
    expected = _scores(model.predict(["G0008"], time=0.5), a)
    np.testing.assert_allclose(_scores(pred, renamed, time_key="day")["value"], expected["value"], equal_nan=True)
    with pytest.raises(KeyError, match=r"adata\.obs\['time'\], which adata does not have; pass time_key="):
        _scores(model.predict(["G0008"], time=0.5), renamed)


def test_prediction_in_a_batch_is_scored_against_that_batch(course):
    a, model = course
    pred = model.predict(["G0008"], time=1.0, batch="b0")
    cells = a[(a.obs["batch"].astype(str) == "b0") & (a.obs["time"] == 1.0)].copy()
    here, alone = _scores(pred, a), _scores(pred, cells)
    assert (here["n_cells"] == int((cells.obs["perturbation"] == "G0008").sum())).all()
    np.testing.assert_allclose(here["value"].to_numpy(), alone["value"].to_numpy(), equal_nan=True)


def test_error_decomposition_of_a_prediction_at_a_time(course):
    a, model = course
    pred = model.predict(["G0008"], time=0.5)
    kwargs = {**KEYS, "batch_key": "batch", "predictions": pred, "n_bootstrap": 5, "n_splits": 3}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        here = tl.error_decomposition(a, **kwargs)
        alone = tl.error_decomposition(a[a.obs["time"] == 0.5].copy(), **kwargs)
    assert "error_decomposition" in a.uns["scmech"]
    pd.testing.assert_frame_equal(here, alone)


def test_a_context_without_the_condition_says_so(course):
    a, model = course
    pred = model.predict(["G0008"], time=0.5)
    elsewhere = a[~((a.obs["perturbation"] == "G0008") & (a.obs["time"] == 0.5))].copy()
    with pytest.raises(ValueError, match=r"No condition to evaluate.*made at time = 0\.5 \(adata\.obs\['time'\]\)"):
        _scores(pred, elsewhere)


def test_a_context_without_controls_names_it_and_the_fix(course):
    a, model = course
    pred = model.predict(["G0008"], time=1.0, batch="b0")
    no_controls = a[~((a.obs["perturbation"] == "NT") & (a.obs["batch"].astype(str) == "b0"))].copy()
    with pytest.raises(
        ValueError, match=r"No control cells \('NT'\) at .*batch = 'b0' \(adata\.obs\['batch'\]\).*without"
    ):
        _scores(pred, no_controls)


def test_rows_for_one_condition_are_refused_with_the_fix_for_their_cause(course):
    a, model = course
    twice = model.predict(["G0008", "G0008"], time=1.0)  # the same request twice: rows G0008#0, G0008#1
    with pytest.raises(
        ValueError, match=r"in the same context \(the condition was requested more than once.*duplicated"
    ):
        _scores(twice, a)
    # as the message says: one row per condition
    assert len(_scores(twice[~twice.obs["perturbation"].duplicated()], a))
    rows = model.predict(["G0008", "G0008"], time=[0.5, 1.0])
    del rows.uns["scmech"]["prediction"]["context_keys"]  # no column to score the times in: read as rows
    match = r"several rows for \['G0008'\], one per time; evaluate one context at a time, e\.g\. (.*)\.$"
    with pytest.raises(ValueError, match=match) as raised:
        tl.evaluate(rows, a, **KEYS, train_conditions=TRAIN)
    # the selection it suggests selects the first time's row (a number, not the string '0.5')
    suggested = re.search(match, str(raised.value)).group(1)
    assert eval(suggested, {"pred": rows}).n_obs == 1  # the message's own expression, run as a user would
