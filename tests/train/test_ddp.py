"""Multi-process training through Lightning's DDP strategy, two CPU processes with the gloo backend.

Lightning launches DDP workers by re-running the training script, so the training runs in a script of its own.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

SCRIPT = textwrap.dedent(
    """
    import os, sys
    import torch
    torch.set_num_threads(1)
    import scmech
    from scmech.model import SemiMechVI

    out, batching = sys.argv[1], sys.argv[2]
    adata = scmech.data.simulate_perturbseq(n_cells=600, n_genes=30, n_perturbations=4, n_combinations=1, seed=0)
    SemiMechVI.setup_anndata(adata, batch_key="batch")
    model = SemiMechVI(adata, n_latent=4, n_hidden=16, field_hidden=8)
    model.train(
        max_epochs=2,
        batch_size=64,
        accelerator="cpu",
        devices=2,
        strategy="ddp_find_unused_parameters_true",
        enable_progress_bar=False,
        batching=batching,
    )
    if os.environ.get("LOCAL_RANK", "0") == "0":
        model.save(out, overwrite=True, save_anndata=True)
        print("RANK0_SAVED", flush=True)
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("batching", ["random", "batch_matched"])
def test_ddp_two_cpu_processes(tmp_path, batching):
    script = tmp_path / "train_ddp.py"
    script.write_text(SCRIPT)
    out = tmp_path / "model"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("LOCAL_RANK", None)
    proc = subprocess.run(
        [sys.executable, str(script), str(out), batching],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Starting with 2 processes" in proc.stdout + proc.stderr
    assert "RANK0_SAVED" in proc.stdout

    from scmech.model import SemiMechVI

    model = SemiMechVI.load(out)
    assert model.is_trained
    pred = model.predict(n_cells=20)
    assert np.isfinite(pred.X).all()
    assert pred.n_obs == len(model.adata_manager.get_state_registry("perturbation")["conditions"])
