# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Quick start: predict held-out knockouts of a real screen
#
# This tutorial trains `SemiMechVI` on the CRISPR knockout screen of Papalexi et al. 2021 (THP-1 cells,
# ECCITE-seq, bundled with scmech), predicts the expression of cells whose target the model has never seen
# perturbed, and compares it with simple baselines and with the noise ceiling of the data.
#
# The story of a user:
#
# 1. load the screen and look at its design;
# 2. hold out whole perturbations (never random cells);
# 3. fit the baselines and train `SemiMechVI` on the rest;
# 4. predict the held-out targets, score every model and plot the comparison.
#
# To keep the tutorial fast it trains for a few epochs only; the numbers of `scmech demo` (30 epochs) are
# better. Set `MAX_EPOCHS = 30` below to reproduce them.

# %%
import tempfile
import warnings

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import scvi
import torch

import scmech

warnings.filterwarnings("ignore", category=UserWarning, module=r"lightning.*")
torch.set_num_threads(1)  # the networks are small: one thread is fastest on a shared CPU
scvi.settings.seed = 0
MAX_EPOCHS = 4
print(f"scmech {scmech.__version__}, scvi-tools {scvi.__version__}, torch {torch.__version__}")

# %% [markdown]
# ## 1. The data
#
# `scmech.datasets.papalexi2021()` returns an AnnData with raw counts of 299 genes (nothing is downloaded).
# `obs["perturbation"]` holds the target gene of each cell's guide, `"NT"` for non-targeting controls and
# `"unassigned"` for cells without a confident guide call. The three biological replicates (`bio_rep`) are
# the wet-lab batches, and each of them holds control cells.

# %%
adata = scmech.datasets.papalexi2021()
print(adata)

# %%
adata.obs["perturbation"].value_counts().head(8)

# %%
adata.obs.groupby("bio_rep", observed=True)["perturbation"].apply(lambda s: (s == "NT").sum()).rename("NT cells")

# %% [markdown]
# ## 2. Hold out whole perturbations
#
# A model that has seen some cells of a perturbation can copy them; the honest question is how well it predicts
# a perturbation it has never seen. `scmech.tl.split` holds out *every* cell of the test conditions and returns
# the indices in the form scvi-tools' data splitter takes (`split.external_indexing`). We hold out STAT1 (a
# strong effect), IFNGR2 (an upstream receptor) and CMTM6 (a weak effect).

# %%
keys = {"perturbation_key": "perturbation", "control_label": "NT"}
split = scmech.tl.split(adata, "perturbation", test_conditions=["STAT1", "IFNGR2", "CMTM6"], **keys)
print(f"train: {len(split.train):,} cells, validation: {len(split.validation):,}, test: {len(split.test):,}")

# %% [markdown]
# ## 3. Fit the baselines and SemiMechVI
#
# Every baseline has the model interface (`setup_anndata`, `train`, `predict`): `ControlMean` predicts no
# change, `TrainMean` the mean change of the training perturbations, `OwnGene` that mean with the target's own
# gene knocked down by the training targets' typical own-gene change, `TargetClassMean` the mean of the training
# targets whose gene is measured (the targets described by the same prior information), and `LinearModel` a
# low-rank linear map from a gene embedding of the target to its change. They are the bar any model has to clear.

# %%
setup = {**keys, "batch_key": "bio_rep", "perturbation_modality": "CRISPRko"}
train_on = {"external_indexing": split.external_indexing}
models = {}
baselines = (scmech.tl.ControlMean, scmech.tl.TrainMean, scmech.tl.OwnGene, scmech.tl.TargetClassMean)
for cls in (*baselines, scmech.tl.LinearModel):
    cls.setup_anndata(adata, **setup)
    models[cls.__name__] = cls(adata)
    models[cls.__name__].train(datasplitter_kwargs=train_on)

# %% [markdown]
# `SemiMechVI` is an scvi-tools model: `setup_anndata` registers the counts and the experimental design, and
# `train` runs the Lightning loop. The steady-state term (`steady_state_weight=1.0`, the default) asks the
# learned dynamics to keep control cells at a fixed point; `steady_state_weight=0` gives the vanilla model.

# %%
scmech.model.SemiMechVI.setup_anndata(adata, **setup)
model = scmech.model.SemiMechVI(adata)
model.train(max_epochs=MAX_EPOCHS, datasplitter_kwargs=train_on, enable_progress_bar=False)
models["SemiMechVI"] = model
print(model)

# %%
history = model.history
fig, ax = plt.subplots(figsize=(5, 3.2), layout="constrained")
for key in ("elbo_train", "elbo_validation"):
    if key in history:
        ax.plot(history[key].index + 1, history[key].iloc[:, 0], marker="o", label=key)
ax.set(xlabel="epoch", ylabel="negative ELBO per cell", title="Training history")
ax.xaxis.get_major_locator().set_params(integer=True)
ax.legend(frameon=False)
plt.show()

# %% [markdown]
# ## 4. Predict the held-out targets and compare
#
# `predict` returns an AnnData with one row per condition: `X` is the log-normalised pseudobulk prediction
# ($\log(1 + 10^4\,\rho)$), `layers["expression"]` the normalised expression. The three held-out targets were
# never seen perturbed in training. SemiMechVI predicts each from what is known of it beforehand: the knock-down
# of its own gene (at the training targets' typical level), carried through the learned dynamics to every other
# gene as far as the training targets show such knock-downs propagate, on top of the observed mean of the
# training targets, each weighed by its precision. `obs["target_source"]` says how, `obs["own_gene_change"]` and
# `obs["own_gene_sd"]` give the predicted change of the target's own gene and its uncertainty.
# `predict(..., anchor="none")` is the model alone, without the correction by the observed training data.

# %%
predictions = {name: m.predict(split.test_conditions) for name, m in models.items()}
predictions["SemiMechVI_alone"] = model.predict(split.test_conditions, anchor="none")
predictions["SemiMechVI"].obs[["target_source", "own_gene_change", "own_gene_sd", "anchored"]]

# %% [markdown]
# Every target can be predicted, also one whose gene the panel does not measure (IRF1 here): it gets the
# shared response of the screen, and says so.

# %%
model.predict(["IRF1"]).obs[["unseen_targets", "target_source"]]

# %% [markdown]
# What does the own-gene level rest on? `model.get_own_gene_calibration()` lists the training targets whose gene
# is measured: how far each knockout moved its own gene against the level the gene would have without it, and
# `scmech.pl.own_gene_calibration` draws them with the calibrated change and its band. Most knockouts of this
# screen lower their own gene by a similar factor; a few (JAK2 here) lower it much further, since their knockout
# also collapses the interferon programme their own gene belongs to. Nothing known before the data says which
# kind an unseen target is, so the level follows the typical knockout and the band is the prediction's
# uncertainty.

# %%
scmech.pl.own_gene_calibration(model.get_own_gene_calibration())
plt.show()

# %% [markdown]
# `scmech.tl.evaluate` scores every prediction against the held-out cells (a tidy table: model, condition,
# metric, value), and `scmech.tl.noise_ceiling` scores the data against itself: one random half of each
# target's cells predicting the other half, the best a model can expect. `pearson_delta_de` is the Pearson
# correlation of predicted and observed changes on each target's top-20 DE genes (t-test, as in GEARS),
# `pearson_delta_top_change` the same on its 20 genes of largest observed change (as in the linear-baseline
# papers); `systema_pearson_delta` correlates changes from the mean training perturbation (Systema), so it scores
# only what is specific to the target, and `systema_pearson_delta_off` does so without the target's own gene.

# %%
results = scmech.tl.evaluate(predictions, adata, split=split, **keys)
ceiling = scmech.tl.noise_ceiling(
    adata, conditions=split.test_conditions, train_conditions=split.train_conditions, **keys
)
results = pd.concat([results, ceiling], ignore_index=True)
metrics = ["pearson_delta_de", "pearson_delta_top_change", "systema_pearson_delta", "systema_pearson_delta_off"]
scmech.tl.leaderboard_table(results, metrics=metrics)

# %% [markdown]
# Per target, how often does SemiMechVI beat each other model?

# %%
scmech.tl.win_counts(results, "SemiMechVI", "pearson_delta_top_change")

# %% [markdown]
# After a few epochs, do not expect SemiMechVI to beat the simple baselines by much: on this screen many
# knockouts of the interferon-gamma pathway share one response, which the train mean already predicts, and
# what is specific to an unseen target is hard to know before any data. The noise ceiling is low and varies a
# lot between targets because a weak target like CMTM6 barely changes expression, so two halves of its cells
# disagree on its top genes. Read every score against both; `benchmarks/results/accuracy.md` has the same
# comparison over every target and three seeds.

# %%
ax = scmech.pl.leaderboard(results, metric="pearson_delta_de")
ax.set_title("Held-out targets: " + ", ".join(split.test_conditions), fontsize="medium")
plt.show()

# %% [markdown]
# Each point of the next plot is one of the 20 genes most changed by STAT1 knockout: the change vs control
# predicted by SemiMechVI (which never saw STAT1-perturbed cells) against the change observed in the held-out
# cells.

# %%
scmech.pl.predicted_vs_observed(predictions["SemiMechVI"], adata, "STAT1", split=split, **keys)
plt.show()

# %% [markdown]
# How far may an unseen target lie from its prediction? `predict(..., interval=0.8)` adds `layers["lower"]` and
# `layers["upper"]`: for each gene, how far the training targets strayed from the weighted mean of the others
# (conformal bounds), around the prediction and the shared response it starts from. Over targets like the training
# targets they hold on about 80 % of the genes; `scmech.tl.interval_coverage` counts how often they held here. The
# promise is on average over targets, not for each: a knockout much stronger than the typical one (STAT1 here) lies
# outside on many of its most changed genes. With
# only a few training targets whose gene is measured, the own gene's bounds can be infinite: so few cannot bound
# a new one at that level.

# %%
bounded = model.predict(split.test_conditions, interval=0.8)
scmech.tl.interval_coverage(bounded, adata, split=split, **keys)

# %%
scmech.pl.predicted_vs_observed(bounded, adata, "STAT1", split=split, **keys)
plt.show()

# %% [markdown]
# ## 5. More than one split
#
# Three targets are a small test. `scmech.tl.leave_one_out` yields one split per target; the baselines fit in
# seconds, so we score them over every measured target.

# %%
scores = []
for s in scmech.tl.leave_one_out(adata, restrict_to_measured=True, **keys):
    preds = {}
    for cls in (scmech.tl.TrainMean, scmech.tl.LinearModel):
        b = cls(adata)  # registered above
        b.train(datasplitter_kwargs={"external_indexing": s.external_indexing})
        preds[cls.__name__] = b.predict(s.test_conditions)
    scores.append(scmech.tl.evaluate(preds, adata, split=s, **keys))
loo = pd.concat(scores, ignore_index=True)
loo[loo["metric"] == "pearson_delta_de"].pivot(index="condition", columns="model", values="value").round(3)

# %% [markdown]
# ## 6. Keep the results
#
# Latent states go to `obsm` (`adata.obsm["X_scmech"]`), the per-cell steady-state residual to `obs`; the
# model saves to a directory in a format that loads without unpickling code.

# %%
adata.obsm["X_scmech"] = model.get_latent_representation()
adata.obs["scmech_ss_residual"] = model.get_steady_state_residual()
with tempfile.TemporaryDirectory() as tmp:
    model.save(f"{tmp}/model")
    reloaded = scmech.model.SemiMechVI.load(f"{tmp}/model", adata=adata)
np.allclose(reloaded.get_latent_representation()[:100], adata.obsm["X_scmech"][:100], atol=1e-5)
