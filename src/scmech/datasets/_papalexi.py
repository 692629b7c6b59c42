"""The bundled Papalexi et al. 2021 THP-1 ECCITE-seq screen (real data, shipped with the package)."""

from __future__ import annotations

import hashlib
from importlib import resources
from typing import TYPE_CHECKING

import anndata as ad
import numpy as np
import pandas as pd

from scmech._numbers import check_flag

if TYPE_CHECKING:
    from mudata import MuData

__all__ = ["papalexi2021"]

_FILE = "papalexi2021_thp1_eccite.h5ad"
_SHA256 = "f6924083faccef512cb0c2f698c8f1c32d85ef0c879969f03a19cf646313b899"


def _path():
    return resources.files("scmech.datasets").joinpath("data", _FILE)


def papalexi2021(*, as_mudata: bool = False, check_integrity: bool = True) -> ad.AnnData | MuData:
    """Papalexi et al. 2021 THP-1 ECCITE-seq CRISPR knockout screen (299 genes, 20,729 cells).

    Real data, bundled with scmech; nothing is downloaded. A low-MOI CRISPR-KO screen in stimulated THP-1
    cells (25 targeted genes with assigned cells, 3 biological replicates), as redistributed by the
    ``sceptredata`` R package (version 0.99.0, commit ``ec722d5``, file ``data/lowmoi_example_data.rda``,
    MIT licence; original data GEO GSE153056). The gene panel is downsampled to 299 genes: a random
    sample of the transcriptome plus 9 targeted genes (STAT1, JAK2, CMTM6, STAT2, UBE2L6, STAT3, TNFRSF14,
    IFNGR2, NFKBIA). Library sizes are panel sums. See ``PROVENANCE.md`` next to the file.

    Reference: Papalexi E., Mimitou E.P., Butler A.W. et al. Characterizing the molecular regulation of
    inhibitory immune checkpoints with multimodal single-cell screens. *Nature Genetics* 53, 322–331 (2021).

    Parameters
    ----------
    as_mudata
        Return a :class:`~mudata.MuData` with modalities ``"rna"`` (gene counts) and ``"guide"`` (gRNA UMI
        counts, 110 guides, ``var["target"]`` their target) instead of an AnnData.
    check_integrity
        Verify the file's SHA-256 before reading it.

    Returns
    -------
    AnnData with raw UMI counts in ``X`` (CSR, int32) and in ``obs``:

    - ``perturbation``: target of the cell's dominant gRNA (sceptre's low-MOI rule: ≥5 UMIs and ≥80 %
      of the cell's gRNA UMIs), ``"NT"`` for non-targeting controls, ``"unassigned"`` otherwise;
    - ``bio_rep``: biological replicate (``rep_1``–``rep_3``), a natural batch key;
    - ``grna``, ``is_control``, ``n_umis_panel`` and gRNA summary columns.

    ``obsm["grna_counts"]`` holds the gRNA counts (column order ``uns["grna_ids"]``, targets in
    ``uns["grna_targets"]``), ``var["is_perturbation_target"]`` marks targeted genes.

    Raises
    ------
    TypeError
        For an ``as_mudata`` or ``check_integrity`` that is not ``True`` or ``False``.
    FileNotFoundError
        When the bundled file is missing from the installation.
    OSError
        When the file fails its integrity check or cannot be read.

    Examples
    --------
    >>> import scmech
    >>> adata = scmech.datasets.papalexi2021()
    >>> adata.shape
    (20729, 299)
    """
    as_mudata = check_flag(as_mudata, "as_mudata")
    check_integrity = check_flag(check_integrity, "check_integrity")
    path = _path()
    with resources.as_file(path) as p:
        if not p.exists():
            msg = f"The bundled dataset {_FILE} is missing from the scmech installation; reinstall scmech."
            raise FileNotFoundError(msg)
        if check_integrity:
            digest = hashlib.sha256(p.read_bytes()).hexdigest()
            if digest != _SHA256:
                msg = f"The bundled dataset {_FILE} is corrupted (sha256 {digest[:12]}…); reinstall scmech."
                raise OSError(msg)
        try:
            adata = ad.read_h5ad(p)
        except (OSError, KeyError, ValueError) as e:
            msg = (
                f"Cannot read the bundled dataset {_FILE} ({type(e).__name__}: {e}); the file is damaged. "
                "Reinstall scmech, or call papalexi2021(check_integrity=True) to verify it."
            )
            raise OSError(msg) from e
    adata.uns["provenance"] = (
        "Papalexi et al. 2021 (Nat Genet 53:322), THP-1 ECCITE-seq CRISPRko; sceptredata 0.99.0 "
        "lowmoi_example_data (GEO GSE153056); bundled with scmech"
    )
    if not as_mudata:
        return adata
    import mudata as md

    guides = np.asarray(adata.uns["grna_ids"]).astype(str)
    gdata = ad.AnnData(
        X=adata.obsm["grna_counts"].copy(),
        obs=pd.DataFrame(index=adata.obs_names.copy()),
        var=pd.DataFrame({"target": np.asarray(adata.uns["grna_targets"]).astype(str)}, index=guides),
    )
    rna = adata.copy()
    del rna.obsm["grna_counts"]
    with md.set_options(pull_on_update=False):
        mdata = md.MuData({"rna": rna, "guide": gdata})
    return mdata
