#!/usr/bin/env bash
# GPU check: train scvi-tools' SCVI and SemiMechVI on 2x10^5 simulated cells (2,000 genes) on one CUDA device and
# print cells/s of both, their ratio, and the time of the steady-state (fixed-point) solve.
#
# Usage, from the repository root (with the project's environment active, or PYTHON=.venv/bin/python):
#
#     bash benchmarks/gpu_check.sh              # one epoch each, batch size 128 (a few minutes)
#     BATCH_SIZE=1024 bash benchmarks/gpu_check.sh
#
# Exits with status 2 and a message when no CUDA device is visible.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
export BATCH_SIZE="${BATCH_SIZE:-128}" N_CELLS="${N_CELLS:-200000}"

"$PYTHON" - <<'EOF'
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

if not torch.cuda.is_available():
    print("gpu_check: no CUDA device is visible to torch (torch.cuda.is_available() is False); "
          "run this script on a machine with an NVIDIA GPU and a CUDA build of torch.", file=sys.stderr)
    sys.exit(2)

sys.path.insert(0, "benchmarks")
import scvi  # noqa: E402
from _common import quiet  # noqa: E402
from speed import WIDTH, _step_timer, make_base, resample  # noqa: E402

from scmech.model import SemiMechVI  # noqa: E402

quiet("lightning.fabric")
scvi.settings.seed = 0
bs, n = int(os.environ["BATCH_SIZE"]), int(os.environ["N_CELLS"])
print(f"device: {torch.cuda.get_device_name(0)}; torch {torch.__version__}, scvi-tools {scvi.__version__}")
with tempfile.TemporaryDirectory() as tmp:
    base = Path(tmp) / "base.h5ad"
    make_base(base)
    adata = resample(base, n)


def train(name):
    a = adata.copy()
    if name == "SCVI":
        scvi.model.SCVI.setup_anndata(a, batch_key="batch")
        model = scvi.model.SCVI(a, **WIDTH)
    else:
        SemiMechVI.setup_anndata(a, perturbation_key="perturbation", control_label="NT", batch_key="batch")
        model = SemiMechVI(a, **WIDTH)
    timer = _step_timer()
    t = time.perf_counter()
    model.train(max_epochs=1, batch_size=bs, train_size=1.0, accelerator="gpu", devices=1,
                enable_progress_bar=False, callbacks=[timer])
    total = time.perf_counter() - t
    steps = np.diff(np.asarray([timer.first_start, *timer.ends]))
    med = float(np.median(steps[5:]))
    print(f"{name:>10}: {bs / med:9.0f} cells/s (median step {med * 1e3:.2f} ms over {len(steps)} steps; "
          f"epoch {timer.ends[-1] - timer.first_start:.1f} s, train() {total:.1f} s)")
    return bs / med, model


scvi_rate, _ = train("SCVI")
sm_rate, model = train("SemiMechVI")
print(f"ratio SemiMechVI / SCVI: {sm_rate / scvi_rate:.2f}")

module = model.module
n_t = module.n_targets
pert = torch.eye(n_t, device=model.device)
media = torch.zeros(n_t, dtype=torch.long, device=model.device)
for implicit in (False, True):
    times = []
    for _ in range(20):
        torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.set_grad_enabled(implicit):
            mu, res = module.readout_states(pert, media, implicit=implicit)
            if implicit:
                mu.sum().backward()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    what = "solve + implicit backward" if implicit else "solve"
    print(f"steady-state {what} for {n_t} conditions: {np.median(times) * 1e3:.2f} ms "
          f"(median of 20; max residual {float(res.max()):.1e})")
EOF
