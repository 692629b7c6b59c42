"""The ``scmech demo`` command: an end-to-end smoke run and the argument errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import scmech
from scmech._cli import main

TARGETS = ["CMTM6", "IFNGR2", "STAT1"]
MODELS = [
    "ControlMean",
    "TrainMean",
    "WeightedTrainMean",
    "OwnGene",
    "TargetClassMean",
    "LinearModel",
    "SemiMechVI",
    "SemiMechVI_alone",
]


@pytest.mark.slow
def test_demo_quick_end_to_end(tmp_path):
    out = tmp_path / "demo"
    env = dict(os.environ, MPLBACKEND="agg")
    # run the installed package, or this source tree when it is not installed
    src = str(Path(scmech.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    cmd = [sys.executable, "-m", "scmech", "demo", "--quick", "--epochs", "1", "--no-vanilla", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    for name in [
        "metrics.csv",
        "leaderboard.csv",
        "leaderboard.png",
        "training_history.png",
        "steady_state_residual.png",
        *(f"predicted_vs_observed_{t}.png" for t in TARGETS),
    ]:
        assert (out / name).stat().st_size > 0, name
    assert (out / "model").is_dir()
    assert any((out / "model").iterdir())

    metrics = pd.read_csv(out / "metrics.csv")
    assert {"model", "condition", "metric", "value", "n_cells"} <= set(metrics.columns)
    for model in [*MODELS, "noise_ceiling"]:
        for target in TARGETS:
            rows = metrics[(metrics["model"] == model) & (metrics["condition"] == target)]
            assert set(rows["metric"]) >= {"pearson_delta_de", "mse_de", "direction_accuracy_de"}, (model, target)
    assert "SemiMechVI_vanilla" not in set(metrics["model"])
    board = pd.read_csv(out / "leaderboard.csv")
    assert set(MODELS) <= set(board["model"])
    assert str(out) in proc.stdout
    assert "pearson_delta_de" in proc.stdout


def test_unknown_target_is_one_line_error(tmp_path, capsys):
    code = main(["demo", "--quick", "--test-targets", "STAT1,NOTAGENE", "--out", str(tmp_path / "o")])
    assert code != 0
    err = capsys.readouterr().err
    assert "'NOTAGENE' is not a target" in err
    assert "STAT1" in err  # the valid choices are listed
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_unmeasured_target_is_predicted_without_the_linear_model(tmp_path, capsys):
    # IFNGR1 is perturbed in the screen but not among the measured genes
    out = tmp_path / "o"
    assert main(["demo", "--quick", "--epochs", "1", "--test-targets", "IFNGR1", "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "IFNGR1: not a measured gene" in said
    board = pd.read_csv(out / "leaderboard.csv")
    assert "LinearModel" not in set(board["model"])
    assert {"SemiMechVI", "SemiMechVI_alone", "OwnGene", "TargetClassMean"} <= set(board["model"])


@pytest.mark.parametrize("value", ["0", "-3", "two", "100000000000000000000"])
def test_epochs_out_of_range(tmp_path, capsys, value):
    assert main(["demo", "--epochs", value, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"--epochs: must be an integer from 1 to 1,000,000, got '{value}'" in err
    assert not (tmp_path / "o").exists()  # refused before any work


def test_unwritable_out_dir(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    assert main(["demo", "--quick", "--out", str(blocker / "out")]) == 2
    err = capsys.readouterr().err
    assert "cannot write to output folder" in err
    assert "Traceback" not in err


def test_empty_targets(tmp_path, capsys):
    assert main(["demo", "--test-targets", " , ", "--out", str(tmp_path / "o")]) == 2
    assert "--test-targets is empty" in capsys.readouterr().err


def test_help_lists_the_options(capsys):
    assert main(["demo", "--help"]) == 0
    text = capsys.readouterr().out
    for option in ("--out", "--epochs", "--seed", "--test-targets", "--quick", "--no-vanilla"):
        assert option in text
