"""Helpers shared by the benchmark scripts: quieter logs, one torch thread, markdown tables, two closed forms and
the Papalexi folds.

The scripts are run as ``python benchmarks/<name>.py`` from the repository root, so this folder is
``sys.path[0]`` and they import from here with ``from _common import md_table, quiet, single_thread``.
"""

from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Collection, Iterator

    import pandas as pd

#: loggers every benchmark sets to ERROR (training progress and informational messages)
LOGGERS = ("lightning", "lightning.pytorch", "scvi", "scmech")


def quiet(*extra_loggers: str) -> None:
    """Ignore all warnings and set the training libraries' loggers to ``ERROR``.

    Parameters
    ----------
    *extra_loggers
        Names of further loggers to set to ``ERROR`` besides :data:`LOGGERS`
        (e.g. ``"lightning.fabric"``).
    """
    warnings.filterwarnings("ignore")
    for name in (*LOGGERS, *extra_loggers):
        logging.getLogger(name).setLevel(logging.ERROR)


def single_thread(*extra_loggers: str) -> None:
    """Run torch on one thread, then :func:`quiet` the logs.

    ``torch`` is imported here rather than at the top of this module, so that scripts which keep torch out
    of their parent process (it only runs in their child processes) can still import this module.

    Parameters
    ----------
    *extra_loggers
        Passed on to :func:`quiet`.
    """
    import torch

    torch.set_num_threads(1)
    quiet(*extra_loggers)


def md_table(
    df: pd.DataFrame,
    floatfmt: str = ".3f",
    *,
    int_columns: Collection[str] = (),
    na_rep: str | None = None,
) -> str:
    """Format a data frame as a markdown table (header, ``|---|`` separator, one line per row; no index).

    Rows are read with :meth:`pandas.DataFrame.iterrows`, so a frame whose columns are all numeric gives
    each row one dtype: integer columns beside float columns are then floats and are formatted with
    ``floatfmt`` (unless they are in ``int_columns``). A frame with a text column keeps every value's type.

    Parameters
    ----------
    df
        The table; its column names are the header.
    floatfmt
        Format specification of float cells, as in :func:`format` (``".3f"``, ``".4g"``, ...).
    int_columns
        Columns whose cells are written as integers (``str(int(value))``), whatever their dtype.
    na_rep
        Text of a NaN float cell; ``None`` formats it with ``floatfmt`` (which gives ``"nan"``).

    Returns
    -------
    The markdown lines, joined by newlines (no trailing newline).
    """

    def cell(column: object, value: object) -> str:
        if column in int_columns:
            return str(int(value))
        if isinstance(value, float):
            if na_rep is not None and value != value:  # NaN
                return na_rep
            return format(value, floatfmt)
        return str(value)

    columns = list(df.columns)
    lines = ["| " + " | ".join(map(str, columns)) + " |", "|" + "---|" * len(columns)]
    for _, row in df.iterrows():
        lines.append("| " + " | ".join(cell(c, v) for c, v in row.items()) + " |")
    return "\n".join(lines)


def pearson(u: np.ndarray, v: np.ndarray) -> float:
    """Pearson correlation (0 for a constant vector)."""
    u, v = u - u.mean(), v - v.mean()
    d = np.sqrt((u @ u) * (v @ v))
    return float(u @ v / d) if d > 0 else 0.0


def knocked(a: float | np.ndarray, level: np.ndarray) -> np.ndarray:
    """Level of a gene at ``level`` (log-normalised) after its production is scaled by ``e^a``."""
    return np.log1p(np.exp(a) * np.expm1(np.maximum(level, 0.0)))


def ttest_top(x, labels: np.ndarray, genes: list[str], groups: list[str], control: str, n: int = 20) -> dict:
    """Top ``n`` genes (indices) of each group by scanpy's t-test against ``control`` (log-normalised cells).

    The gene set of ``scmech.tl.evaluate``'s ``pearson_delta_de``: ``rank_genes_groups`` with ``rankby_abs`` on the
    cells' counts normalised to 1e4 and log1p-transformed.
    """
    import anndata as ad
    import pandas as pd
    import scanpy as sc

    from scmech._threads import log_normalise

    keep = np.isin(labels, [*groups, control])
    cells = ad.AnnData(X=x[keep].astype(np.float32), obs=pd.DataFrame({"group": labels[keep]}).astype("category"))
    cells.var_names = list(genes)
    cells.obs_names = cells.obs_names.astype(str)
    log_normalise(cells)
    sc.tl.rank_genes_groups(
        cells, "group", groups=groups, reference=control, method="t-test", rankby_abs=True, n_genes=n
    )
    names = cells.uns["rank_genes_groups"]["names"]
    index = {g: i for i, g in enumerate(genes)}
    return {t: np.array([index[g] for g in names[t]]) for t in groups}


def papalexi_folds(
    adata, seed: int, keys: dict, *, measured: bool = True, size: int = 3
) -> Iterator[tuple[int, object]]:
    """Folds of Papalexi's targets whose gene is measured (or not), ``size`` held out at a time, shuffled by ``seed``.

    Yields each fold's number and its :func:`scmech.tl.split` (``"perturbation"``, with ``keys``), as every
    Papalexi leaderboard of these scripts holds targets out.
    """
    import scmech

    labels = set(adata.obs["perturbation"].astype(str)) - {"NT", "unassigned"}
    genes = set(map(str, adata.var_names))
    pool = [t for t in sorted(labels) if (t in genes) == measured]
    order = np.random.default_rng(seed).permutation(pool)
    for k, held in enumerate(np.array_split(order, len(pool) // size)):
        yield k, scmech.tl.split(adata, "perturbation", test_conditions=sorted(held), random_state=seed, **keys)


def simulated_screen(seed: int) -> tuple:
    """The benchmarks' large simulated screen: 150 single targets over 400 genes and 16,000 cells, a quarter held out.

    Returns the AnnData, its :func:`scmech.tl.split` and the keys it was split with.
    """
    import scmech

    adata = scmech.data.simulate_perturbseq(
        n_cells=16_000, n_genes=400, n_perturbations=150, n_combinations=0, seed=seed
    )
    adata.obs["perturbation"] = adata.obs["perturbation"].astype(str)
    keys = {"perturbation_key": "perturbation", "control_label": "NT"}
    split = scmech.tl.split(adata, "perturbation", test_size=0.25, random_state=seed, **keys)
    return adata, split, keys


def train_semimechvi(adata, split, setup: dict, seed: int, epochs: int = 30, **model_kwargs):
    """SemiMechVI registered on a copy of ``adata`` with ``setup`` and trained on ``split`` (seeded by ``seed``).

    ``model_kwargs`` go to the model (``gene_likelihood="normal"`` for log-normalised input).
    """
    import scvi

    from scmech.model import SemiMechVI

    scvi.settings.seed = seed
    data = adata.copy()
    SemiMechVI.setup_anndata(data, **setup)
    model = SemiMechVI(data, **model_kwargs)
    model.train(
        max_epochs=epochs, datasplitter_kwargs={"external_indexing": split.external_indexing}, enable_progress_bar=False
    )
    return model


def baseline_predictions(adata, split, setup: dict, conditions: list[str], baselines) -> dict:
    """Predictions of ``conditions`` by each ``(name, class, kwargs)`` of ``baselines``, trained on ``split``."""
    out = {}
    for name, cls, kwargs in baselines:
        data = adata.copy()
        cls.setup_anndata(data, **setup)
        baseline = cls(data, **kwargs)
        baseline.train(datasplitter_kwargs={"external_indexing": split.external_indexing})
        out[name] = baseline.predict(conditions)
    return out
