"""Target names matched to gene names (``scmech.data._target_genes``): closed forms."""

from __future__ import annotations

import pandas as pd
import pytest

from scmech.data._target_genes import check_target_genes, name_positions, target_gene_names


def test_names_come_from_var_names_or_the_column_with_missing_names_empty():
    var = pd.DataFrame(
        {"symbol": pd.Categorical(["A", None, "C", "A"]), "n": [1, 2, 3, 4]}, index=["e1", "e2", "e3", "e4"]
    )
    assert list(target_gene_names(var)) == ["e1", "e2", "e3", "e4"]
    assert list(target_gene_names(var, "symbol")) == ["A", "", "C", "A"]
    missing = r"gene_symbols 'gene' is not a column of adata.var \(columns: \['symbol', 'n'\]\)"
    with pytest.raises(KeyError, match=missing):
        target_gene_names(var, "gene")
    with pytest.raises(TypeError, match=r"adata.var\['n'\] holds int64 values"):
        target_gene_names(var, "n")


def test_positions_keep_the_first_of_a_repeated_name_and_skip_missing_ones():
    assert name_positions(["A", "", "C", "A"]) == {"A": 0, "C": 2}


def test_only_a_target_naming_two_genes_is_refused():
    names = ["A", "", "C", "A", "B", "B"]
    check_target_genes(names, ["C", "D"])  # repeated names that no target carries are fine
    with pytest.raises(ValueError, match=r"2 target\(s\) of obs\['guide'\].*'A' at gene positions \[0, 3\]"):
        check_target_genes(names, ["A", "B"], "guide", "symbol")
