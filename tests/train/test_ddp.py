"""Multi-process training through Lightning's DDP strategy, two CPU processes with the gloo backend.

Lightning launches DDP workers by re-running the training script, so the training runs in a script of its own.
"""

from __future__ import annotations

import math
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
    import scvi
    import scmech
    from scmech.model import SemiMechVI

    scvi.settings.seed = 0  # every process draws the same train/validation split
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


def _run(tmp_path, text: str, *args) -> subprocess.CompletedProcess:
    """Run ``text`` as a training script in ``tmp_path`` (Lightning relaunches it in each DDP worker)."""
    script = tmp_path / "train_ddp.py"
    script.write_text(text)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("LOCAL_RANK", None)
    return subprocess.run(
        [sys.executable, str(script), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=tmp_path,
    )


@pytest.mark.slow
@pytest.mark.parametrize("batching", ["random", "batch_matched"])
def test_ddp_two_cpu_processes(tmp_path, batching):
    out = tmp_path / "model"
    proc = _run(tmp_path, SCRIPT, out, batching)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Starting with 2 processes" in proc.stdout + proc.stderr
    assert "RANK0_SAVED" in proc.stdout

    from scmech.model import SemiMechVI

    model = SemiMechVI.load(out)
    assert model.is_trained
    pred = model.predict(n_cells=20)
    assert np.isfinite(pred.X).all()
    assert pred.n_obs == len(model.adata_manager.get_state_registry("perturbation")["conditions"])


RESUME_SCRIPT = textwrap.dedent(
    """
    import os, sys
    import torch
    torch.set_num_threads(1)
    from lightning.pytorch.callbacks import Callback, ModelCheckpoint
    import scvi
    import scmech
    from scmech.model import SemiMechVI

    scvi.settings.seed = 0  # every process (and the resumed run) draws the same train/validation split
    out, mode = sys.argv[1], sys.argv[2]

    class Count(Callback):  # writes how many minibatches this process trained on in each epoch
        def on_train_epoch_end(self, trainer, pl_module):
            rank = os.environ.get("LOCAL_RANK", "0")
            with open(os.path.join(out, f"batches_{mode}_{rank}.txt"), "a") as f:
                f.write(f"{trainer.num_training_batches} {len(trainer.datamodule.train_idx)}\\n")

    class Crash(Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            if trainer.current_epoch == 1:
                raise RuntimeError("simulated crash")

    adata = scmech.data.simulate_perturbseq(n_cells=600, n_genes=30, n_perturbations=4, n_combinations=1, seed=0)
    SemiMechVI.setup_anndata(adata, batch_key="batch")
    model = SemiMechVI(adata, n_latent=4, n_hidden=16, field_hidden=8)
    kwargs = dict(
        max_epochs=3, batch_size=64, accelerator="cpu", devices=2, strategy="ddp_find_unused_parameters_true",
        enable_progress_bar=False, batching="batch_matched",
    )
    if mode == "crash":
        try:
            model.train(callbacks=[Count(), ModelCheckpoint(dirpath=out, save_last=True), Crash()], **kwargs)
        except RuntimeError as e:
            print("CRASHED", e, flush=True)
        sys.exit(0)
    model.train(ckpt_path=os.path.join(out, "last.ckpt") if mode == "resume" else None, callbacks=[Count()], **kwargs)
    if os.environ.get("LOCAL_RANK", "0") == "0":
        torch.save(model.module.state_dict(), os.path.join(out, mode + ".pt"))
        print("RANK0_SAVED", flush=True)
    """
)


@pytest.fixture(scope="module")
def ddp_resumed(tmp_path_factory):
    """Saved weights of a two-process run of 3 epochs, and of the same run interrupted after 2 and resumed."""
    import torch

    path = tmp_path_factory.mktemp("ddp_resume")
    for mode in ("full", "crash", "resume"):
        proc = _run(path, RESUME_SCRIPT, path, mode)
        assert proc.returncode == 0, (mode, proc.stderr[-3000:])
    ckpt = torch.load(path / "last.ckpt", weights_only=True)
    full = torch.load(path / "full.pt", weights_only=True)
    resumed = torch.load(path / "resume.pt", weights_only=True)
    return ckpt, full, resumed, path


@pytest.mark.slow
def test_ddp_resume_restores_each_process_own_generators(ddp_resumed):
    """Each process resumed with the generator states of process 0 (the only one Lightning writes); the checkpoint
    now holds one row of states per process, and a two-process run resumes from it to the end."""
    import torch

    ckpt, full, resumed, _ = ddp_resumed
    (rng,) = [v for k, v in ckpt["callbacks"].items() if "RNGState" in k]
    assert rng["states"].shape[0] == 2
    assert not torch.equal(rng["states"][0], rng["states"][1])  # the processes' generators differ
    assert list(resumed) == list(full)
    assert all(bool(torch.isfinite(v.float()).all()) for v in resumed.values())


@pytest.mark.slow
def test_ddp_resume_reproduces_the_uninterrupted_run(ddp_resumed):
    """Each process resumed with process 0's generators, and its batch-matched sampler started at epoch 0 again;
    the run ended about 1% away from the uninterrupted one."""
    import torch

    _, full, resumed, _ = ddp_resumed
    for key in full:
        torch.testing.assert_close(resumed[key], full[key], rtol=1e-5, atol=1e-6, msg=key)


def test_several_processes_without_a_seed_are_refused_before_launching(monkeypatch):
    """Without scvi.settings.seed each DDP process drew its own train/validation split (found when resuming a DDP
    run: the processes' training cells differed); such a run is now refused before any process starts."""
    import scvi

    import scmech
    from scmech.model import SemiMechVI

    adata = scmech.data.simulate_perturbseq(n_cells=300, n_genes=20, n_perturbations=3, n_combinations=0, seed=0)
    SemiMechVI.setup_anndata(adata, batch_key="batch")
    model = SemiMechVI(adata, n_latent=4, n_hidden=16, field_hidden=8)
    monkeypatch.setattr(scvi.settings, "seed", None, raising=False)
    for kwargs in ({"devices": 2}, {"devices": -1}, {"devices": [0, 1]}, {"num_nodes": 2}):
        with pytest.raises(ValueError, match=r"Training in several processes .*Set scvi\.settings\.seed"):
            model.train(max_epochs=1, accelerator="cpu", strategy="ddp", **kwargs)
    assert not model.is_trained_


@pytest.mark.slow
def test_ddp_batch_matched_trains_on_every_minibatch(ddp_resumed):
    """The batch-matched sampler shards its minibatches across processes itself, and Lightning wrapped it in a
    distributed sampler that sharded them again: each process trained on 3 of its 5 minibatches per epoch, a third
    of the cells left out of every epoch without a word."""
    *_, path = ddp_resumed
    for rank in ("0", "1"):
        rows = [line.split() for line in (path / f"batches_full_{rank}.txt").read_text().splitlines()]
        assert len(rows) == 3  # one line per epoch
        for n_batches, n_cells in rows:
            # the minibatches of an epoch (about n_cells / 64) split over 2 processes, none dropped
            assert int(n_batches) >= math.ceil(int(n_cells) / 64 / 2)
