r"""Evaluation of perturbation predictions: per-condition metrics, noise ceiling and leaderboards.

Definitions follow ANCHORS §4. For an evaluated condition :math:`p`, :math:`\mu_p` is its observed
pseudobulk, :math:`\hat\mu_p` the prediction and :math:`\mu_{\mathrm{ctrl}}` the observed control pseudobulk,
all in the space of :func:`scmech.data.pseudobulk`, :math:`\log(1 + 10^4\bar\rho)`; predictions from
``SemiMechVI.predict`` and the baselines of :mod:`scmech.tl` live in the same space.

Metrics (``metric`` strings; ↑ higher is better, ↓ lower is better), by family:

- correlation (:mod:`._correlation`):

  - ``pearson`` ↑: :math:`\mathrm{corr}_g(\hat\mu_p, \mu_p)` (saturates near 1, shown for completeness).
  - ``pearson_delta`` ↑: :math:`\mathrm{corr}_g(\hat\mu_p-\mu_{\mathrm{ctrl}},\ \mu_p-\mu_{\mathrm{ctrl}})` over all
    genes.
  - ``pearson_delta_de`` ↑: the same on :math:`p`'s top ``n_de_genes`` DE genes vs control (t-test, GEARS).
  - ``pearson_delta_top_change`` ↑: the same on the ``n_de_genes`` genes with the largest observed
    :math:`|\mu_p-\mu_{\mathrm{ctrl}}|` (the linear-baseline papers' gene set).
  - ``systema_pearson_delta`` ↑: :math:`\mathrm{corr}_g(\hat\mu_p - r,\ \mu_p - r)`, :math:`r` the mean of the
    observed centroids of the training perturbations; ``systema_pearson_delta_de`` ↑ on the DE genes;
    ``systema_pearson_delta_off`` ↑ over all genes but the perturbation's own target genes (what a prediction
    says beyond the knock-down of its own mRNA).

- error (:mod:`._error`):

  - ``mse`` ↓: :math:`\frac1G\sum_g(\hat\mu_{p,g}-\mu_{p,g})^2`; ``mse_de`` ↓ on the DE genes.
  - ``l2_top`` ↓: :math:`\lVert\hat\mu_p-\mu_p\rVert_2` over the ``n_top_expressed`` genes most expressed in control.
  - ``direction_accuracy_de`` ↑: share of DE genes whose predicted change has the observed sign (changes
    below 1e-5, float32 storage noise, count as 0).

- rank (:mod:`._rank`):

  - ``centroid_accuracy`` ↑: share of the other evaluated conditions :math:`q` with
    :math:`\lVert\hat\mu_p-\mu_q\rVert > \lVert\hat\mu_p-\mu_p\rVert` (Systema).
  - ``perturbench_rank`` ↓: :math:`\#\{q: \lVert\hat\mu_p-\mu_q\rVert < \lVert\hat\mu_p-\mu_p\rVert\}/n` over the
    :math:`n` evaluated conditions (PerturBench; 0 best).

- distribution (:mod:`._distribution`):

  - ``energy_distance`` ↓: E-distance between predicted and observed cells in PCA space (Euclidean).

The other modules: :mod:`._names` (metric directions), :mod:`._checks` (input checks), :mod:`._predictions`
(reading predictions), :mod:`._observed` (the observed side: pseudobulks, DE genes, cells), :mod:`._score`
(every family of every model), :mod:`._evaluate` (:func:`evaluate`), :mod:`._noise_ceiling`
(:func:`noise_ceiling`), :mod:`._coverage` (:func:`interval_coverage`) and :mod:`._leaderboard`
(:func:`leaderboard`, :func:`leaderboard_table`, :func:`win_counts`).
"""

from __future__ import annotations

# tests read ``tl._metrics.pseudobulk``, which the single-module _metrics had imported
from scmech.data._pseudobulk import pseudobulk

from ._checks import _index_mask, check_finite_rows
from ._correlation import _pearson
from ._coverage import interval_coverage
from ._distribution import energy_distance
from ._evaluate import evaluate
from ._leaderboard import leaderboard, leaderboard_table, win_counts
from ._names import METRIC_DIRECTIONS, higher_is_better
from ._noise_ceiling import noise_ceiling
from ._observed import _Observed
from ._predictions import _design, _prediction_frame

__all__ = [
    "METRIC_DIRECTIONS",
    "evaluate",
    "interval_coverage",
    "leaderboard",
    "leaderboard_table",
    "noise_ceiling",
    "win_counts",
]
