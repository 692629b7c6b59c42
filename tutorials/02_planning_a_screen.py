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
# # Planning a screen: error decomposition of a pilot and a batch design
#
# You have run a pilot screen and want to plan the full one: how many batches, how many cells per perturbation,
# where to put the controls, and how deep to sequence. This tutorial
#
# 1. splits the error of the pilot's perturbation effects into a **noise floor**, a **batch** term and
#    **confounding** (`scmech.tl.error_decomposition`), on the bundled Papalexi et al. 2021 screen with its three
#    biological replicates as batches;
# 2. shows on the simulator what happens when perturbations and batches are confounded;
# 3. turns the pilot's variance terms into a recommended batch layout (`scmech.tl.recommend_batches`) and into
#    power and budget curves (`scmech.tl.power`).
#
# The equations are on the {doc}`framework page <../../framework>`; in short, the error of an effect estimated
# against controls is $(\sigma^2_\text{bio} + \sigma^2_\text{meas})(1/n_p + 1/n_\varnothing)$, plus
# $2\sigma^2_\text{batch}$ whenever the perturbed cells and their controls come from different batches.
# No model is trained here: everything runs in about a minute.

# %%
import warnings

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

import scmech

print(f"scmech {scmech.__version__}")

# %% [markdown]
# ## 1. The pilot: how large are the noise terms?
#
# The Papalexi screen has 25 targets and three replicates (`bio_rep`), each with its own non-targeting controls,
# so all three variance terms can be estimated: $\sigma^2_\text{batch}$ from the controls across replicates,
# $\sigma^2_\text{cell} = \sigma^2_\text{bio} + \sigma^2_\text{meas}$ from random halves of the controls within
# a replicate, and $\sigma^2_\text{meas}$ from the counting noise at the pilot's depth. The bootstrap over cells
# gives intervals (200 replicates are the default; 30 keep this tutorial fast).

# %%
pilot = scmech.datasets.papalexi2021()
pilot.obs.groupby("bio_rep", observed=True)["perturbation"].apply(lambda s: int((s == "NT").sum())).rename(
    "NT controls"
)

# %%
table = scmech.tl.error_decomposition(pilot, batch_key="bio_rep", n_bootstrap=30)
pilot.uns["scmech"]["error_decomposition"]["variance_summary"]

# %% [markdown]
# `table` is tidy (condition, component, value, interval). Per perturbation, the expected squared error of its
# effect splits into the noise floor (too few cells), a batch term (the perturbation's batches differ from its
# controls') and confounding (cells only in batches without controls; zero here, because every replicate holds
# controls). The black marks are the totals with their bootstrap intervals.

# %%
table.pivot(index="condition", columns="component", values="value").round(4).head()

# %%
scmech.pl.error_components(pilot)
plt.show()

# %% [markdown]
# The noise floor dominates for targets with few cells; the batch term is small because each target is spread
# over all three replicates, each with its own controls.
#
# The same decomposition scores a prediction: pass a model's (or a baseline's) predictions and the model term
# is added beside the data's own floor, so you see how much of the error the model can still remove. Here the
# control-mean baseline, which predicts no effect at all:

# %%
scmech.tl.ControlMean.setup_anndata(pilot, perturbation_key="perturbation", control_label="NT")
control_mean = scmech.tl.ControlMean(pilot)
control_mean.train()
conditions = sorted(set(table["condition"]))
prediction = control_mean.predict([*conditions, "NT"])
scored = scmech.tl.error_decomposition(
    pilot, batch_key="bio_rep", predictions=prediction, n_bootstrap=0, key_added="control_mean"
)
scmech.pl.error_components(scored)
plt.show()

# %% [markdown]
# Where the model term dominates, a better model would help; where the noise floor dominates, only more cells
# would. The model term is estimated without bias, so for targets whose effect the control mean already matches
# (weak knockouts) it scatters around zero and can dip slightly below it.
#
# ## 2. Why controls belong in every batch
#
# The simulator knows the truth, so it can show what confounding costs. Two screens with the same network and
# cells: in `"spread"` every condition, controls included, is in every batch; in `"confounded"` each
# perturbation sits in one batch and the controls only in the first.

# %%
sims = {
    layout: scmech.data.simulate_perturbseq(
        2000, 60, n_perturbations=8, n_combinations=0, n_batches=4, batch_sd=0.3, design=layout, seed=1
    )
    for layout in ("spread", "confounded")
}
pd.crosstab(sims["confounded"].obs["perturbation"], sims["confounded"].obs["batch"])

# %% [markdown]
# The confounded screen cannot even measure its own batch effect: with controls in one batch only,
# $\sigma^2_\text{batch}$ is not identifiable, and `error_decomposition` says so. The spread screen can, so it
# serves as the pilot whose per-gene variance terms (`variance=`) the confounded screen borrows.

# %%
spread = scmech.tl.error_decomposition(sims["spread"], batch_key="batch", n_bootstrap=0)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    scmech.tl.error_decomposition(sims["confounded"], batch_key="batch", n_bootstrap=0)
for w in caught:
    print(w.message)

# %%
pilot_variance = sims["spread"].uns["scmech"]["error_decomposition"]["variance"]
confounded = scmech.tl.error_decomposition(
    sims["confounded"], batch_key="batch", variance=pilot_variance, n_bootstrap=0
)
fig, axs = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
for ax, (layout, tab) in zip(axs, {"spread": spread, "confounded": confounded}.items(), strict=True):
    scmech.pl.error_components(tab, ax=ax, show=False)
    ax.set_title(f'design="{layout}" ' + ax.get_title(loc="left").removeprefix("error decomposition"), loc="left")
xmax = max(ax.get_xlim()[1] for ax in axs)
for ax in axs:
    ax.set_xlim(0, xmax)
plt.show()

# %% [markdown]
# In the confounded screen the perturbations outside the controls' batch carry the full batch difference as
# "confounding": no number of cells removes it.
#
# ## 3. A recommended design for the full screen
#
# `recommend_batches` lays out the cells of the next screen over batches: controls in every batch
# ($\sqrt K$ controls per $K$ perturbations, the split that minimises the error of $K$ comparisons with one
# shared control group), each perturbation in at least two batches, and cell numbers sized by the pilot's
# variance terms for the effect you want to detect. Here: 25 perturbations, 3 batches of 10,000 cells, an
# effect of 0.3 on the log-normalised scale.

# %%
design = scmech.tl.recommend_batches(25, n_batches=3, cells_per_batch=10_000, target_effect=0.3, pilot=pilot)
for note in design.notes:
    print("-", note)
design.table.iloc[:, :6]

# %%
fig, axs = plt.subplots(1, 2, figsize=(12, 8), layout="constrained")
scmech.pl.design_table(design, ax=axs[0], show=False)
scmech.pl.design_table(design, naive=True, ax=axs[1], show=False)
plt.show()

# %% [markdown]
# The naive reference on the right uses the same cells, one batch per perturbation and all controls in the
# first batch. Its expected error per perturbation is in `design.expected_error`:

# %%
design.expected_error[["n_cells", "n_controls", "expected_error", "naive_expected_error", "mde", "naive_mde"]].head()

# %% [markdown]
# ## 4. Power and the sequencing budget
#
# `power` gives the minimal detectable effect (MDE) for a number of cells per perturbation, per gene or averaged
# over genes:

# %%
mde = scmech.tl.power(pilot, n_cells=[50, 100, 200, 400, 800, 1600, 3200], per_gene=True, n_perturbations=25)
scmech.pl.power_curve(mde)
plt.show()

# %% [markdown]
# and, for a fixed budget of reads, the trade-off between more cells and deeper cells. Measurement noise falls
# with depth, biological variance does not; when capturing a cell costs as much as sequencing it at the pilot's
# depth, the optimum is marked:

# %%
depth = float(np.asarray(pilot.X.sum(axis=1)).mean())
budget = scmech.tl.power(
    pilot, budget_reads=pilot.n_obs * depth, cell_cost_reads=depth, n_perturbations=25, pilot_depth=depth
)
print(budget.attrs["optimum"])
scmech.pl.power_curve(budget)
plt.show()

# %% [markdown]
# Cells needed per perturbation for a few effect sizes (two-sided test, level 0.05, power 0.8):

# %%
scmech.tl.power(pilot, effect=[0.1, 0.2, 0.3, 0.5], n_perturbations=25)
