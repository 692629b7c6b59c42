r"""Mechanistic Perturb-seq simulator: a gene-regulatory ODE observed through a measurement operator.

The simulator realises the framework (FRAMEWORK.md §2–7) and is the ground truth for scmech's tests and
benchmarks. It has three layers:

1. **Dynamics** (:class:`SimulatedNetwork`). For genes :math:`g` with state :math:`x_g\ge 0`,

   .. math::

      \dot x = f(x; m, p) = \alpha \odot \mu_m \odot u_p(\eta) \odot e^{\sigma\,\pi_{\mathrm{sys}}}
      \odot h(x) - \gamma \odot x,\qquad
      h_g(x) = b_g + (1 - b_g)\,\mathrm{sigmoid}\Big(\textstyle\sum_j W_{gj}\, x_j / k_j + c_g\Big),

   with production rates :math:`\alpha` (log-normal), degradation :math:`\gamma` (around 1 per day),
   basal production :math:`b`, medium multipliers :math:`\mu_m` (:math:`\mu_0=1`), the perturbation
   :math:`u_p` (:math:`1-\eta` on the targets for CRISPRi/CRISPRko, :math:`1+a\eta` for CRISPRa), the
   shared "stress" program :math:`\pi_{\mathrm{sys}}` (on, :math:`\sigma=1`, in the fraction of perturbed
   cells that show the systematic response) and sparse signed regulation :math:`W` (``W[g, j]`` is the
   effect of gene ``j`` on gene ``g``). The normalising state :math:`k` is the baseline fixed point and
   the offsets are :math:`c_g = z_g - \sum_j W_{gj}`, so at baseline each sigmoid sits at its operating
   point :math:`z_g` (not saturated) and :math:`f(k; m_0, \varnothing) = 0` holds by construction (A1).
   The regulators are ordered and a regulator is only regulated by earlier ones, so :math:`W` is acyclic:
   every :math:`(m, p, \eta)` has a unique, globally stable fixed point (A2), the Jacobian is triangular
   in that order with eigenvalues :math:`-\gamma`, and the fixed-point iteration
   :math:`x \leftarrow \alpha\ldots h(x)/\gamma` converges exactly in (depth of the graph + 1) steps.

2. **Cells.** Per condition (and medium, protocol and read-out time) the states are solved on a grid of
   efficacies; a cell's state is interpolated linearly at its efficacy :math:`\eta_c` and multiplied by
   :math:`\exp(\epsilon_c)`, a per-gene Gaussian (``bio_sd``) plus a rank-2 "cell-cycle" program.

3. **Measurement** :math:`\mathcal O_b`: capture :math:`s_{bg}`, proportions
   :math:`\rho_{cg} = x_{cg}s_{bg}/\sum_h x_{ch}s_{bh}`, library size :math:`\ell_c` and
   :math:`y_{cg}\sim\mathrm{NB}(\ell_c\rho_{cg}, \theta_g)`, optionally zero-inflated.

The output contract (``obs`` columns, ``uns["truth"]`` keys) is documented in :func:`simulate_perturbseq`.
The file has six sections: the dynamics (:class:`SimulatedNetwork`), random networks and perturbations,
group keys and design helpers, parameter validation, cells/states/measurement/truth tables, and
:func:`simulate_perturbseq` itself.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.special import expit
from scipy.stats import beta as beta_dist

from scmech._constants import TARGET_SUM

__all__ = ["CONTROL_LABEL", "SimulatedNetwork", "simulate_perturbseq", "simulation_group_keys"]

#: label of non-targeting control cells
CONTROL_LABEL = "NT"
_MODALITIES = ("CRISPRi", "CRISPRko", "CRISPRa")
_REGIMES = ("steady_state", "dynamic")
_DESIGNS = ("spread", "confounded", "controls_missing")
#: RK4 step (days)
_DT = 0.05
#: relative residual max|f| / max(gamma * x) above which a steady-state solve counts as not converged
_RES_TOL = 1e-8
#: escapers have an efficacy uniform on [0, _ESCAPER_MAX]
_ESCAPER_MAX = 0.05
#: rank of the cell-cycle-like program
_CELL_CYCLE_RANK = 2
#: genes count as expressed for the scalar variance components above this mean (counts per TARGET_SUM)
_VAR_MEAN_THRESHOLD = 1.0
_CHUNK = 8192


# ------------------------------------------------------------------------------------------------------------
# 1. Dynamics: the vector field, its fixed points and trajectories
# ------------------------------------------------------------------------------------------------------------


def _gene_names(n: int) -> list[str]:
    width = max(4, len(str(n - 1)))
    return [f"G{i:0{width}d}" for i in range(n)]


@dataclass(eq=False)
class SimulatedNetwork:
    r"""The true gene-regulatory ODE of a simulation.

    :math:`f(x) = \alpha \odot \mu_m \odot u_p(\eta) \odot e^{\sigma\pi} \odot h(x) - \gamma \odot x` with
    :math:`h_g(x) = b_g + (1-b_g)\,\mathrm{sigmoid}(\sum_j W_{gj} x_j / k_j + c_g)` (module docstring).

    Parameters
    ----------
    W
        Regulation (genes x genes); ``W[g, j]`` is the effect of gene ``j`` on gene ``g``.
    alpha
        Production rates.
    gamma
        Degradation rates (per day).
    basal
        Basal fraction :math:`b_g` of the maximal production.
    offset
        Sigmoid offsets :math:`c_g`.
    baseline
        Normalising state :math:`k` (the baseline control fixed point of the simulator's networks).
    media_effect
        Production multipliers (media x genes); row 0 is the baseline medium (ones).
    systematic_program
        Log production multiplier of the shared (systematic) response, per gene (0 outside the program).
    modality
        ``"CRISPRi"``/``"CRISPRko"`` scale target production by :math:`1-\eta`, ``"CRISPRa"`` by
        :math:`1 + a\eta`.
    activation_strength
        :math:`a` for CRISPRa.
    gene_names
        Gene names; ``"G0000"``... when empty.

    Examples
    --------
    >>> adata = simulate_perturbseq(500, 50, n_perturbations=4, n_combinations=1, seed=0)
    >>> net = SimulatedNetwork.from_truth(adata.uns["truth"])
    >>> x0 = net.steady_state()
    >>> bool(np.abs(net.f(x0)).max() < 1e-8)
    True
    """

    W: np.ndarray
    alpha: np.ndarray
    gamma: np.ndarray
    basal: np.ndarray
    offset: np.ndarray
    baseline: np.ndarray
    media_effect: np.ndarray
    systematic_program: np.ndarray
    modality: str = "CRISPRi"
    activation_strength: float = 3.0
    gene_names: list[str] = field(default_factory=list)
    _W_csr: sp.csr_matrix = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.W = np.asarray(self.W, dtype=np.float64)
        if self.W.ndim != 2 or self.W.shape[0] != self.W.shape[1]:
            msg = f"W must be a square matrix, got shape {self.W.shape}."
            raise ValueError(msg)
        n = self.W.shape[0]
        for name in ("alpha", "gamma", "basal", "offset", "baseline", "systematic_program"):
            value = np.asarray(getattr(self, name), dtype=np.float64).ravel()
            if value.shape != (n,):
                msg = f"{name} must have one value per gene ({n}), got shape {value.shape}."
                raise ValueError(msg)
            setattr(self, name, value)
        self.media_effect = np.atleast_2d(np.asarray(self.media_effect, dtype=np.float64))
        if self.media_effect.shape[1] != n:
            msg = f"media_effect must be media x genes with {n} genes, got shape {self.media_effect.shape}."
            raise ValueError(msg)
        if self.modality not in _MODALITIES:
            msg = f"modality={self.modality!r} is not supported; expected one of {_MODALITIES}."
            raise ValueError(msg)
        self.activation_strength = float(self.activation_strength)
        self.gene_names = [str(g) for g in self.gene_names] if len(self.gene_names) else _gene_names(n)
        self._W_csr = sp.csr_matrix(self.W)

    # -- basic quantities ------------------------------------------------------------------------------------

    @property
    def n_genes(self) -> int:
        """Number of genes."""
        return self.W.shape[0]

    @property
    def n_media(self) -> int:
        """Number of media."""
        return self.media_effect.shape[0]

    def target_index(self, targets: str | int | Sequence[str | int]) -> np.ndarray:
        """Return the indices of target genes given by name (``"G0012"``) or position."""
        if isinstance(targets, str | int | np.integer):
            targets = [targets]
        pos = {g: i for i, g in enumerate(self.gene_names)}
        out = []
        for t in targets:
            if isinstance(t, int | np.integer):
                if not 0 <= int(t) < self.n_genes:
                    msg = f"Target index {t} is out of range [0, {self.n_genes})."
                    raise ValueError(msg)
                out.append(int(t))
            elif str(t) in pos:
                out.append(pos[str(t)])
            else:
                msg = f"Target {t!r} is not a gene of the network."
                raise KeyError(msg)
        return np.asarray(out, dtype=np.int64)

    def perturbation_factor(self, efficacy: float | np.ndarray) -> np.ndarray:
        r"""Production multiplier of a target at efficacy :math:`\eta`: :math:`1-\eta` or :math:`1+a\eta`."""
        eta = np.asarray(efficacy, dtype=np.float64)
        return 1.0 + self.activation_strength * eta if self.modality == "CRISPRa" else 1.0 - eta

    def production(
        self,
        media: int = 0,
        targets: str | int | Sequence[str | int] = (),
        efficacy: float = 1.0,
        systematic: float = 0.0,
    ) -> np.ndarray:
        r"""Production rates :math:`\alpha\odot\mu_m\odot u_p(\eta)\odot e^{\sigma\pi}` for one condition.

        Parameters
        ----------
        media
            Medium index (0 is the baseline medium).
        targets
            Target genes (names or indices); empty for the control.
        efficacy
            Efficacy :math:`\eta\in[0,1]` applied to every target.
        systematic
            Strength :math:`\sigma` of the shared response (1 = on, 0 = off).

        Returns
        -------
        Production rate per gene.
        """
        if not 0 <= int(media) < self.n_media:
            msg = f"media={media!r} is out of range; expected an integer in [0, {self.n_media})."
            raise ValueError(msg)
        if not 0.0 <= float(efficacy) <= 1.0:
            msg = f"efficacy={efficacy!r} is out of range; expected a value in [0, 1]."
            raise ValueError(msg)
        prod = self.alpha * self.media_effect[int(media)]
        if systematic:
            prod = prod * np.exp(float(systematic) * self.systematic_program)
        idx = self.target_index(targets)
        if idx.size:
            prod = prod.copy()
            prod[idx] *= self.perturbation_factor(efficacy)
        return prod

    def regulatory_input(self, x: np.ndarray) -> np.ndarray:
        """Sigmoid argument :math:`z = W (x/k) + c` for a state (genes) or states (n x genes)."""
        x = np.asarray(x, dtype=np.float64)
        u = x / self.baseline
        z = self._W_csr @ u if x.ndim == 1 else (self._W_csr @ u.T).T
        return z + self.offset

    def h(self, x: np.ndarray) -> np.ndarray:
        r"""Saturating production :math:`h(x) = b + (1-b)\,\mathrm{sigmoid}(W x/k + c)`."""
        return self.basal + (1.0 - self.basal) * expit(self.regulatory_input(x))

    def _field(self, x: np.ndarray, prod: np.ndarray) -> np.ndarray:
        return prod * self.h(x) - self.gamma * x

    def f(
        self,
        x: np.ndarray,
        media: int = 0,
        targets: str | int | Sequence[str | int] = (),
        efficacy: float = 1.0,
        systematic: float = 0.0,
    ) -> np.ndarray:
        """Evaluate the true vector field :math:`f(x; m, p)`.

        Parameters
        ----------
        x
            State (genes) or states (n x genes).
        media, targets, efficacy, systematic
            Condition, as in :meth:`production`.

        Returns
        -------
        :math:`dx/dt`, same shape as ``x``.
        """
        return self._field(np.asarray(x, dtype=np.float64), self.production(media, targets, efficacy, systematic))

    def jacobian(
        self,
        x: np.ndarray,
        media: int = 0,
        targets: str | int | Sequence[str | int] = (),
        efficacy: float = 1.0,
        systematic: float = 0.0,
    ) -> np.ndarray:
        r"""Jacobian :math:`\partial f/\partial x` (genes x genes) at a state ``x``; arguments as in :meth:`f`."""
        prod = self.production(media, targets, efficacy, systematic)
        return self._jacobian(np.asarray(x, dtype=np.float64), prod)

    def _jacobian(self, x: np.ndarray, prod: np.ndarray) -> np.ndarray:
        s = expit(self.regulatory_input(x))
        dh = (1.0 - self.basal) * s * (1.0 - s)
        jac = (prod * dh)[:, None] * self.W / self.baseline[None, :]
        jac[np.diag_indices_from(jac)] -= self.gamma
        return jac

    def _relative_residual(self, x: np.ndarray, prod: np.ndarray) -> np.ndarray:
        x2 = np.atleast_2d(x)
        res = np.abs(self._field(x2, np.atleast_2d(prod))).max(axis=1)
        return res / np.maximum((self.gamma * x2).max(axis=1), 1e-300)

    # -- fixed points ----------------------------------------------------------------------------------------

    def _solve_fixed_points(
        self, prod: np.ndarray, *, tol: float = 1e-13, max_iter: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        r"""Solve fixed points for a batch of production vectors (n x genes); return states and relative residuals.

        Fixed-point iteration :math:`x\leftarrow \mathrm{prod}\odot h(x)/\gamma` from the baseline (exact for
        an acyclic W); rows that do not converge are integrated towards the attractor and polished with Newton.
        """
        prod = np.atleast_2d(np.asarray(prod, dtype=np.float64))
        x = np.broadcast_to(self.baseline, prod.shape).copy()
        max_iter = 2 * self.n_genes + 10 if max_iter is None else max_iter
        for _ in range(max_iter):
            new = prod * self.h(x) / self.gamma
            change = np.abs(new - x).max(axis=1) / np.maximum(new.max(axis=1), 1e-300)
            x = new
            if change.max() <= tol:
                break
        res = self._relative_residual(x, prod)
        bad = np.flatnonzero(~(res <= _RES_TOL))
        if bad.size:
            t_end = 30.0 / float(self.gamma.min())
            x[bad] = self._rk4(x[bad], 0.0, t_end, lambda _t: prod[bad], 0.5 / float(self.gamma.max()))
            unstable = 0
            for i in bad:
                x[i] = self._newton(x[i], prod[i])
                unstable += bool(np.linalg.eigvals(self._jacobian(x[i], prod[i])).real.max() >= 0)
            res = self._relative_residual(x, prod)
            if unstable:
                msg = (
                    f"{unstable} fixed point(s) found by Newton's method are unstable: the ODE has no attracting "
                    "steady state there (e.g. a limit cycle)."
                )
                warnings.warn(msg, UserWarning, stacklevel=3)
        return x, res

    def _newton(self, x: np.ndarray, prod: np.ndarray, n_iter: int = 30) -> np.ndarray:
        for _ in range(n_iter):
            fx = self._field(x, prod)
            if np.abs(fx).max() <= _RES_TOL * 1e-3 * max(float((self.gamma * x).max()), 1e-300):
                break
            try:
                step = np.linalg.solve(self._jacobian(x, prod), fx)
            except np.linalg.LinAlgError:
                break
            x = np.maximum(x - step, 0.0)
        return x

    def steady_state(
        self,
        media: int = 0,
        targets: str | int | Sequence[str | int] = (),
        efficacy: float = 1.0,
        systematic: float = 0.0,
    ) -> np.ndarray:
        r"""Solve the fixed point :math:`x^\star` with :math:`f(x^\star; m, p) = 0`.

        Solved by fixed-point iteration from the baseline state (exact for the simulator's acyclic networks);
        if that does not converge (e.g. a network with cycles), the state is integrated towards the attractor
        and polished by Newton's method. Warns when the relative residual stays above ``1e-8`` or when a fixed point
        found that way is unstable (no attracting steady state, e.g. a limit cycle).

        Parameters
        ----------
        media, targets, efficacy, systematic
            Condition, as in :meth:`production`.

        Returns
        -------
        The fixed point (genes).
        """
        prod = self.production(media, targets, efficacy, systematic)
        x, res = self._solve_fixed_points(prod[None, :])
        _warn_residual(res)
        return x[0]

    # -- trajectories ----------------------------------------------------------------------------------------

    def _rk4(self, x: np.ndarray, t0: float, t1: float, prod_fn: Callable[[float], np.ndarray], dt: float):
        n_steps = max(1, math.ceil((t1 - t0) / dt - 1e-9))
        step = (t1 - t0) / n_steps
        for i in range(n_steps):
            t = t0 + i * step
            k1 = self._field(x, prod_fn(t))
            p_mid = prod_fn(t + step / 2)
            k2 = self._field(x + step / 2 * k1, p_mid)
            k3 = self._field(x + step / 2 * k2, p_mid)
            k4 = self._field(x + step * k3, prod_fn(t + step))
            x = x + step / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
        return x

    def _integrate_batch(
        self,
        x0: np.ndarray,
        t_start: float,
        t_out: np.ndarray,
        *,
        media_before: np.ndarray,
        media_after: np.ndarray,
        switch: np.ndarray,
        pair_rows: np.ndarray,
        pair_cols: np.ndarray,
        efficacy: np.ndarray,
        systematic: np.ndarray,
        onset_tau: float,
        dt: float = _DT,
    ) -> np.ndarray:
        r"""Integrate many protocols at once; returns states (len(t_out) x n x genes).

        The perturbation (targets ``pair_cols`` of rows ``pair_rows`` at ``efficacy``, and the systematic
        program with strength ``systematic``) acts from t = 0 with the ramp :math:`1-e^{-t/\tau}`; row ``i``
        switches from ``media_before[i]`` to ``media_after[i]`` at ``switch[i]`` (NaN: never).
        """
        x = np.array(x0, dtype=np.float64)
        t_out = np.asarray(t_out, dtype=np.float64)
        t_end = float(t_out.max())
        events = {float(t_start), t_end, *t_out.tolist()}
        if t_start < 0.0 < t_end:
            events.add(0.0)
        events |= {float(s) for s in switch[np.isfinite(switch)] if t_start < s < t_end}
        events = sorted(events)
        out = np.empty((len(t_out), *x.shape))
        out[np.isclose(t_out, t_start)] = x
        sys_rows = np.flatnonzero(systematic != 0)
        with np.errstate(invalid="ignore"):
            for a, b in zip(events[:-1], events[1:], strict=True):
                mid = 0.5 * (a + b)
                med = np.where(switch <= mid, media_after, media_before)
                base = self.alpha * self.media_effect[med]

                def perturbed(ramp: float, base: np.ndarray = base) -> np.ndarray:
                    prod = base.copy()
                    if sys_rows.size:
                        prod[sys_rows] *= np.exp(ramp * systematic[sys_rows, None] * self.systematic_program)
                    prod[pair_rows, pair_cols] *= self.perturbation_factor(efficacy[pair_rows] * ramp)
                    return prod

                const = base if mid < 0.0 else (perturbed(1.0) if onset_tau == 0.0 else None)

                def prod_fn(t: float, const: np.ndarray | None = const, perturbed=perturbed) -> np.ndarray:
                    if const is not None:
                        return const
                    return perturbed(1.0 - math.exp(-max(t, 0.0) / onset_tau))

                x = self._rk4(x, a, b, prod_fn, dt)
                out[np.isclose(t_out, b)] = x
        return out

    def integrate(
        self,
        x0: np.ndarray,
        t: Sequence[float] | np.ndarray,
        *,
        media: int = 0,
        targets: str | int | Sequence[str | int] = (),
        efficacy: float = 1.0,
        systematic: float = 0.0,
        onset_tau: float = 0.0,
        switch_time: float | None = None,
        switch_media: int = 1,
        dt: float = _DT,
    ) -> np.ndarray:
        r"""Trajectory of one protocol with fixed-step RK4.

        The perturbation acts from :math:`t=0` (with efficacy :math:`\eta(t)=\eta(1-e^{-t/\tau})` when
        ``onset_tau > 0``; the systematic program ramps the same way); the cell is in ``media`` until
        ``switch_time`` and in ``switch_media`` afterwards.

        Parameters
        ----------
        x0
            State at ``t[0]`` (genes).
        t
            Increasing output times (days; the perturbation is applied at 0, so ``t[0] < 0`` starts before it).
        media, targets, efficacy, systematic
            Condition, as in :meth:`production`.
        onset_tau
            Onset delay :math:`\tau` of the perturbation (0 = instantaneous).
        switch_time
            Time of the media switch, ``None`` for none.
        switch_media
            Medium after the switch.
        dt
            Maximal RK4 step.

        Returns
        -------
        States at ``t`` (len(t) x genes).

        Examples
        --------
        >>> adata = simulate_perturbseq(500, 50, n_perturbations=4, n_combinations=0, seed=0)
        >>> net = SimulatedNetwork.from_truth(adata.uns["truth"])
        >>> traj = net.integrate(net.steady_state(), [0.0, 1.0, 2.0], targets="G0001", efficacy=0.9)
        >>> traj.shape
        (3, 50)
        """
        t = np.asarray(t, dtype=np.float64).ravel()
        if t.size == 0 or np.any(np.diff(t) <= 0) or not np.all(np.isfinite(t)):
            msg = "t must be a non-empty, strictly increasing sequence of finite times."
            raise ValueError(msg)
        if onset_tau < 0:
            msg = f"onset_tau={onset_tau!r} is out of range; expected a value >= 0."
            raise ValueError(msg)
        for name, m in (("media", media), ("switch_media", switch_media)):
            if switch_time is None and name == "switch_media":
                continue
            if not 0 <= int(m) < self.n_media:
                msg = f"{name}={m!r} is out of range; expected an integer in [0, {self.n_media})."
                raise ValueError(msg)
        self.production(media, targets, efficacy, systematic)  # validates the condition
        idx = self.target_index(targets)
        x0 = np.asarray(x0, dtype=np.float64).reshape(1, -1)
        out = self._integrate_batch(
            x0,
            float(t[0]),
            t,
            media_before=np.array([int(media)]),
            media_after=np.array([int(switch_media if switch_time is not None else media)]),
            switch=np.array([np.nan if switch_time is None else float(switch_time)]),
            pair_rows=np.zeros(idx.size, dtype=np.int64),
            pair_cols=idx,
            efficacy=np.array([float(efficacy)]),
            systematic=np.array([float(systematic)]),
            onset_tau=float(onset_tau),
            dt=dt,
        )
        return out[:, 0, :]

    # -- persistence -----------------------------------------------------------------------------------------

    def to_truth(self) -> dict[str, Any]:
        """Return the network's parameters as plain arrays (the network part of ``uns["truth"]``)."""
        return {
            "W": self.W.copy(),
            "alpha": self.alpha.copy(),
            "gamma": self.gamma.copy(),
            "basal": self.basal.copy(),
            "offset": self.offset.copy(),
            "baseline": self.baseline.copy(),
            "media_effect": self.media_effect.copy(),
            "systematic_program": self.systematic_program.copy(),
            "modality": self.modality,
            "activation_strength": float(self.activation_strength),
            "gene_names": list(self.gene_names),
        }

    @classmethod
    def from_truth(cls, truth: dict[str, Any]) -> SimulatedNetwork:
        """Rebuild the network from ``adata.uns["truth"]`` (also after an h5ad round trip).

        Parameters
        ----------
        truth
            The ``uns["truth"]`` dictionary written by :func:`simulate_perturbseq`.

        Returns
        -------
        The true network of the simulation.
        """
        keys = ("W", "alpha", "gamma", "basal", "offset", "baseline", "media_effect", "systematic_program")
        missing = [k for k in keys if k not in truth]
        if missing:
            msg = f"truth lacks the network keys {missing}; pass adata.uns['truth'] of simulate_perturbseq."
            raise KeyError(msg)
        return cls(
            **{k: np.asarray(truth[k]) for k in keys},
            modality=str(truth.get("modality", "CRISPRi")),
            activation_strength=float(truth.get("activation_strength", 3.0)),
            gene_names=[str(g) for g in truth.get("gene_names", [])],
        )


def _warn_residual(res: np.ndarray) -> None:
    bad = ~(np.asarray(res) <= _RES_TOL)
    if bad.any():
        msg = (
            f"{int(bad.sum())} of {bad.size} steady-state solves did not converge "
            f"(largest relative residual {np.nanmax(res):.2e} > {_RES_TOL:.0e})."
        )
        warnings.warn(msg, UserWarning, stacklevel=3)


# ------------------------------------------------------------------------------------------------------------
# 2. Building a random network and choosing perturbations
# ------------------------------------------------------------------------------------------------------------


def _signed_program(rng: np.random.Generator, genes: np.ndarray, strength: float, p_up: float) -> np.ndarray:
    sign = np.where(rng.random(genes.size) < p_up, 1.0, -1.0)
    return strength * sign * rng.uniform(0.5, 1.5, genes.size)


def _build_network(rng: np.random.Generator, p: dict[str, Any]) -> tuple[SimulatedNetwork, dict[str, np.ndarray]]:
    n = p["n_genes"]
    n_reg = int(min(n - 1, max(2, round(p["regulator_fraction"] * n))))
    regs = rng.permutation(n)[:n_reg]  # topological order: regs[i] is regulated only by regs[:i]
    reg_pos = {int(g): i for i, g in enumerate(regs)}
    popularity = rng.lognormal(0.0, 1.0, n_reg)  # a few hubs regulate many genes
    W = np.zeros((n, n))
    for g in range(n):
        n_cand = reg_pos.get(g, n_reg)
        if n_cand == 0 or rng.random() < p["unregulated_fraction"]:
            continue
        k = int(min(n_cand, 1 + rng.poisson(p["regulators_per_gene"] - 1.0)))
        w = popularity[:n_cand] / popularity[:n_cand].sum()
        js = regs[rng.choice(n_cand, size=k, replace=False, p=w)]
        W[g, js] = np.where(rng.random(k) < 0.65, 1.0, -1.0) * rng.uniform(0.75, 2.5, k)
    alpha = np.exp(rng.normal(0.0, p["alpha_sd"], n))
    gamma = np.exp(rng.normal(0.0, 0.25, n))
    basal = rng.uniform(0.05, 0.25, n)
    z0 = rng.normal(0.0, 0.75, n)
    offset = z0 - W.sum(axis=1)
    baseline = alpha * (basal + (1.0 - basal) * expit(z0)) / gamma
    # shared stress program (systematic variation): mostly up-regulated, ~8% of genes
    sys_genes = rng.choice(n, size=max(2, round(0.08 * n)), replace=False)
    systematic = np.zeros(n)
    systematic[sys_genes] = _signed_program(rng, sys_genes, p["systematic_strength"], 0.7)
    cell_cycle = np.zeros((n, _CELL_CYCLE_RANK))
    for r in range(_CELL_CYCLE_RANK):
        genes = rng.choice(n, size=max(2, round(0.1 * n)), replace=False)
        cell_cycle[genes, r] = rng.normal(0.0, 1.0, genes.size) * p["cell_cycle_sd"]
    theta = p["dispersion"] * np.exp(rng.normal(0.0, 0.25, n))
    # media programs: ~10% of genes, a third of them regulators so the program propagates
    media = np.ones((p["n_media"], n))
    n_prog = max(2, round(0.1 * n))
    for m in range(1, p["n_media"]):
        reg_part = rng.choice(regs, size=min(n_reg, max(1, n_prog // 3)), replace=False)
        rest = rng.choice(np.setdiff1d(np.arange(n), reg_part), size=n_prog - reg_part.size, replace=False)
        genes = np.concatenate([reg_part, rest])
        media[m, genes] = np.exp(_signed_program(rng, genes, p["media_strength"], 0.5))
    net = SimulatedNetwork(
        W=W,
        alpha=alpha,
        gamma=gamma,
        basal=basal,
        offset=offset,
        baseline=baseline,
        media_effect=media,
        systematic_program=systematic,
        modality=p["modality"],
        activation_strength=p["activation_strength"],
        gene_names=_gene_names(n),
    )
    return net, {"theta": theta, "cell_cycle": cell_cycle}


def _choose_perturbations(
    rng: np.random.Generator, net: SimulatedNetwork, n_single: int, n_comb: int
) -> tuple[list[int], list[tuple[int, int]]]:
    """Choose single targets and combinations.

    Singles: half strong regulators (most targets), half weak genes, all reasonably expressed; combinations:
    pairs sharing downstream genes (within two steps).
    """
    n = net.n_genes
    adj = net.W != 0  # adj[g, j]: j regulates g
    out_deg = adj.sum(axis=0)
    prop = net.baseline / net.baseline.sum()
    expressed = prop >= np.quantile(prop, 0.5)
    strong_pool = np.flatnonzero(expressed & (out_deg > 0))
    strong_pool = strong_pool[np.argsort(-out_deg[strong_pool], kind="stable")]
    n_strong = min(math.ceil(n_single / 2), strong_pool.size)
    strong = rng.choice(strong_pool[: max(n_strong, min(strong_pool.size, 2 * n_strong))], n_strong, replace=False)
    weak_pool = np.setdiff1d(np.flatnonzero(expressed & (out_deg <= 1)), strong)
    n_weak = min(n_single - n_strong, weak_pool.size)
    weak = rng.choice(weak_pool, n_weak, replace=False)
    chosen = np.concatenate([strong, weak]).astype(int)
    if chosen.size < n_single:
        rest = np.setdiff1d(np.arange(n), chosen)
        chosen = np.concatenate([chosen, rng.choice(rest, n_single - chosen.size, replace=False)])
    singles = sorted(int(g) for g in chosen)
    if n_comb == 0:
        return singles, []
    a2 = adj.astype(np.int64)
    reach = (a2 + a2 @ a2) > 0  # reach[g, j]: g within two steps downstream of j
    pairs = [(a, b) for i, a in enumerate(singles) for b in singles[i + 1 :]]
    overlap = np.array([int((reach[:, a] & reach[:, b]).sum()) for a, b in pairs])
    order = np.argsort(-overlap, kind="stable")
    good = order[overlap[order] > 0]
    pool = good[: max(n_comb, min(good.size, 2 * n_comb))]
    pick = list(rng.choice(pool, min(n_comb, pool.size), replace=False)) if pool.size else []
    if len(pick) < n_comb:
        rest = np.setdiff1d(np.arange(len(pairs)), pick)
        pick += list(rng.choice(rest, n_comb - len(pick), replace=False))
    return singles, sorted(pairs[i] for i in pick)


# ------------------------------------------------------------------------------------------------------------
# 3. Group keys and design helpers (allocation, efficacy distribution)
# ------------------------------------------------------------------------------------------------------------


def _fmt_time(v: float) -> str:
    return "none" if not np.isfinite(v) else f"{float(v):g}"


def simulation_group_keys(obs: pd.DataFrame, *, regime: str | None = None, batch: bool = False) -> np.ndarray:
    """Per-cell keys of the truth tables (``uns["truth"]["mean_log"]`` etc.) of a simulation.

    The key is ``"{perturbation}|{media}"`` in the steady-state regime and
    ``"{perturbation}|{media}|{media_time}|{time}"`` in the dynamic regime, with times written by ``"{:g}"``
    and ``"none"`` for cells that were not switched (e.g. ``"G0012|m1|-1|2"``, ``"NT|m0|none|0.5"``). With
    ``batch=True`` ``"|{batch}"`` is appended (the index of ``mean_log_batch``).

    Parameters
    ----------
    obs
        ``adata.obs`` of a simulation (or a subset of it).
    regime
        ``"steady_state"`` or ``"dynamic"``; inferred from the presence of a ``time`` column when ``None``.
    batch
        Whether to append the batch.

    Returns
    -------
    Array of keys, one per cell.

    Examples
    --------
    >>> adata = simulate_perturbseq(500, 50, n_perturbations=4, n_combinations=1, seed=0)
    >>> keys = simulation_group_keys(adata.obs)
    >>> bool(set(keys) <= set(adata.uns["truth"]["mean_log"].index))
    True
    """
    if regime is None:
        regime = "dynamic" if "time" in obs.columns else "steady_state"
    keys = obs["perturbation"].astype(str).str.cat(obs["media"].astype(str), sep="|")
    if regime == "dynamic":
        mt = pd.Series([_fmt_time(v) for v in obs["media_time"].to_numpy(dtype=float)], index=obs.index)
        tt = pd.Series([_fmt_time(v) for v in obs["time"].to_numpy(dtype=float)], index=obs.index)
        keys = keys.str.cat([mt, tt], sep="|")
    if batch:
        keys = keys.str.cat(obs["batch"].astype(str), sep="|")
    return keys.to_numpy(dtype=object)


def _allocate(n_total: int, weights: np.ndarray) -> np.ndarray:
    """Largest-remainder allocation of ``n_total`` items proportional to ``weights``."""
    if weights.size == 0:
        return np.zeros(0, dtype=np.int64)
    exact = n_total * weights / weights.sum()
    base = np.floor(exact).astype(np.int64)
    rem = n_total - int(base.sum())
    base[np.argsort(-(exact - base), kind="stable")[:rem]] += 1
    return base


def _design_frequency(p: dict[str, Any], n_cond: int) -> np.ndarray:
    """Frequency of each condition (control first) in the guide library, before selection."""
    if n_cond == 1:
        return np.ones(1)
    cf = p["control_fraction"]
    return np.concatenate([[cf], np.full(n_cond - 1, (1.0 - cf) / (n_cond - 1))])


def _balanced(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    return rng.permutation(np.arange(n) % k) if k > 0 else np.zeros(n, dtype=np.int64)


def _draw_efficacy(rng: np.random.Generator, n: int, p: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    m, kappa = p["efficacy_mean"], p["efficacy_concentration"]
    eta = np.full(n, m) if m in (0.0, 1.0) else rng.beta(m * kappa, (1.0 - m) * kappa, n)
    escaper = rng.random(n) < p["escaper_fraction"]
    eta[escaper] = rng.uniform(0.0, _ESCAPER_MAX, int(escaper.sum()))
    return eta, escaper


def _efficacy_quadrature(p: dict[str, Any], n_points: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Points and weights of the efficacy distribution (Beta and escaper mixture) for population means."""
    m, kappa, e = p["efficacy_mean"], p["efficacy_concentration"], p["escaper_fraction"]
    q = (np.arange(n_points) + 0.5) / n_points
    main = np.full(n_points, m) if m in (0.0, 1.0) else beta_dist.ppf(q, m * kappa, (1.0 - m) * kappa)
    esc = q * _ESCAPER_MAX
    pts = np.concatenate([main, esc])
    wts = np.concatenate([np.full(n_points, (1.0 - e) / n_points), np.full(n_points, e / n_points)])
    return pts, wts


# ------------------------------------------------------------------------------------------------------------
# 4. Parameter validation
# ------------------------------------------------------------------------------------------------------------


def _check_int(name: str, value: Any, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        msg = f"{name} must be an integer, got {value!r} ({type(value).__name__})."
        raise TypeError(msg)
    if value < low or (high is not None and value > high):
        rng_txt = f">= {low}" if high is None else f"in [{low}, {high}]"
        msg = f"{name}={value!r} is out of range; expected an integer {rng_txt}."
        raise ValueError(msg)
    return int(value)


def _check_float(
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    open_low: bool = False,
    open_high: bool = False,
) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        msg = f"{name} must be a number, got {value!r} ({type(value).__name__})."
        raise TypeError(msg)
    v = float(value)
    bad = not np.isfinite(v)
    bad |= low is not None and (v < low or (open_low and v == low))
    bad |= high is not None and (v > high or (open_high and v == high))
    if bad:
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf" if high is None else f"{high:g}"
        interval = f"{'(' if open_low or low is None else '['}{lo}, {hi}{')' if open_high or high is None else ']'}"
        msg = f"{name}={value!r} is out of range; expected a finite value in {interval}."
        raise ValueError(msg)
    return v


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        msg = f"{name}={value!r} is not allowed; expected one of {list(choices)}."
        raise ValueError(msg)
    return str(value)


def _validate(p: dict[str, Any]) -> dict[str, Any]:
    q = dict(p)
    q["n_cells"] = _check_int("n_cells", p["n_cells"], 1)
    q["n_genes"] = _check_int("n_genes", p["n_genes"], 10)
    q["n_perturbations"] = _check_int("n_perturbations", p["n_perturbations"], 0, q["n_genes"] // 2)
    n_pairs = q["n_perturbations"] * (q["n_perturbations"] - 1) // 2
    q["n_combinations"] = _check_int("n_combinations", p["n_combinations"], 0, n_pairs)
    q["regime"] = _check_choice("regime", p["regime"], _REGIMES)
    q["modality"] = _check_choice("modality", p["modality"], _MODALITIES)
    q["design"] = _check_choice("design", p["design"], _DESIGNS)
    for name, low, high, ol, oh in (
        ("control_fraction", 0.0, 1.0, True, True),
        ("efficacy_mean", 0.0, 1.0, False, False),
        ("efficacy_concentration", 0.0, None, True, False),
        ("escaper_fraction", 0.0, 1.0, False, False),
        ("activation_strength", 0.0, None, True, False),
        ("regulator_fraction", 0.0, 1.0, True, False),
        ("regulators_per_gene", 1.0, None, False, False),
        ("unregulated_fraction", 0.0, 1.0, False, False),
        ("media_strength", 0.0, None, False, False),
        ("onset_tau", 0.0, None, False, False),
        ("bio_sd", 0.0, None, False, False),
        ("cell_cycle_sd", 0.0, None, False, False),
        ("systematic_fraction", 0.0, 1.0, False, False),
        ("systematic_strength", 0.0, None, False, False),
        ("fitness_sd", 0.0, None, False, False),
        ("batch_sd", 0.0, None, False, False),
        ("library_size_mean", 0.0, None, True, False),
        ("library_size_sd", 0.0, None, False, False),
        ("dispersion", 0.0, None, True, False),
        ("dropout", 0.0, 1.0, False, True),
        ("alpha_sd", 0.0, None, False, False),
    ):
        q[name] = _check_float(name, p[name], low, high, open_low=ol, open_high=oh)
    q["guides_per_target"] = _check_int("guides_per_target", p["guides_per_target"], 1)
    q["n_batches"] = _check_int("n_batches", p["n_batches"], 1)
    q["n_efficacy_grid"] = _check_int("n_efficacy_grid", p["n_efficacy_grid"], 2)
    q["seed"] = _check_int("seed", p["seed"], 0)
    if q["design"] == "controls_missing" and q["n_batches"] < 2:
        msg = f"n_batches={q['n_batches']} is out of range for design='controls_missing'; expected >= 2."
        raise ValueError(msg)
    # time points and media switches (used in the dynamic regime; stored in both)
    tp = p["time_points"]
    if isinstance(tp, str | bytes) or not isinstance(tp, Sequence | np.ndarray) or len(tp) == 0:
        msg = f"time_points={tp!r} must be a non-empty sequence of times >= 0."
        raise ValueError(msg)
    q["time_points"] = sorted({_check_float("time_points", t, 0.0) for t in tp})
    sw = p["media_switch_times"]
    if sw is None:
        switches = [np.nan]
    elif isinstance(sw, str | bytes) or not isinstance(sw, Sequence | np.ndarray) or len(sw) == 0:
        msg = f"media_switch_times={sw!r} must be None or a non-empty sequence of times (None/NaN: no switch)."
        raise ValueError(msg)
    else:
        switches = []
        for s in sw:
            v = np.nan if s is None or (isinstance(s, float) and np.isnan(s)) else _check_float("media_switch_times", s)
            if not any((np.isnan(v) and np.isnan(u)) or v == u for u in switches):
                switches.append(v)
    q["media_switch_times"] = switches
    any_switch = any(np.isfinite(s) for s in switches)
    n_media = p["n_media"]
    if n_media is None:
        n_media = 2 if q["regime"] == "dynamic" and any_switch else 1
    q["n_media"] = _check_int("n_media", n_media, 1)
    if q["regime"] == "dynamic" and any_switch and q["n_media"] < 2:
        msg = f"n_media={q['n_media']} is out of range for a dynamic regime with media switches; expected >= 2."
        raise ValueError(msg)
    return q


# ------------------------------------------------------------------------------------------------------------
# 5. Cells, states on the efficacy grid, measurement and truth tables (helpers of simulate_perturbseq)
# ------------------------------------------------------------------------------------------------------------


@dataclass
class _Cells:
    """Per-cell design, in the final (shuffled) cell order."""

    cond: np.ndarray  # condition index (0 = control)
    batch: np.ndarray
    eta: np.ndarray  # efficacy
    escaper: np.ndarray
    systematic: np.ndarray  # shows the shared response
    guide_idx: np.ndarray  # (cells, 2) guide numbers
    lib: np.ndarray  # library size
    ctx: np.ndarray  # state context: medium (steady state) or protocol (dynamic)
    t_idx: np.ndarray  # read-out time index (0 in the steady-state regime)
    media: np.ndarray  # medium at read-out
    media_time: np.ndarray  # switch time into that medium, NaN if not switched
    time: np.ndarray  # read-out time, NaN in the steady-state regime


def _design_cells(
    rng: np.random.Generator, p: dict[str, Any], fitness: np.ndarray, switches: np.ndarray, times: np.ndarray
) -> _Cells:
    """Cells over conditions (fitness-weighted), media or protocol x time (balanced) and batches (``design``)."""
    dynamic = p["regime"] == "dynamic"
    n_cond, B = fitness.size + 1, p["n_batches"]
    if n_cond > 1 and np.any(fitness != 0):
        # selection: abundance = design frequency x exp(fitness), controls neutral (fitness 0)
        counts = _allocate(p["n_cells"], _design_frequency(p, n_cond) * np.exp(np.concatenate([[0.0], fitness])))
        if counts[0] == 0:
            counts[0], counts[np.argmax(counts)] = 1, counts.max() - 1
    else:
        n_ctrl = p["n_cells"] if n_cond == 1 else max(1, round(p["control_fraction"] * p["n_cells"]))
        counts = np.concatenate([[n_ctrl], _allocate(p["n_cells"] - n_ctrl, np.ones(n_cond - 1))])
    n_slots = switches.size * times.size if dynamic else p["n_media"]
    conf_batch = np.zeros(n_cond, dtype=np.int64)  # confounded: perturbations round robin, controls in b0
    conf_batch[1:][rng.permutation(n_cond - 1)] = np.arange(n_cond - 1) % B
    cond, slot, batch = [], [], []
    for c, n_c in enumerate(counts):
        cond.append(np.full(n_c, c))
        slot.append(_balanced(rng, n_c, n_slots))
        if p["design"] == "confounded":
            batch.append(np.full(n_c, conf_batch[c]))
        elif p["design"] == "controls_missing" and c == 0:
            batch.append(_balanced(rng, n_c, B - 1))
        else:
            batch.append(_balanced(rng, n_c, B))
    cond, slot, batch = np.concatenate(cond), np.concatenate(slot), np.concatenate(batch)
    n = cond.size
    perturbed = cond > 0
    eta, escaper = _draw_efficacy(rng, n, p)
    eta[~perturbed] = 0.0
    escaper &= perturbed
    systematic = perturbed & (rng.random(n) < p["systematic_fraction"])
    guide_idx = rng.integers(1, p["guides_per_target"] + 1, size=(n, 2))
    sd = p["library_size_sd"]
    lib = np.exp(rng.normal(math.log(p["library_size_mean"]) - sd**2 / 2, sd, n))
    order = rng.permutation(n)
    cond, slot, batch, eta, escaper, systematic, guide_idx, lib = (
        a[order] for a in (cond, slot, batch, eta, escaper, systematic, guide_idx, lib)
    )
    if dynamic:
        ctx, t_idx = slot // times.size, slot % times.size
        time_ = times[t_idx]
        s = switches[ctx]
        with np.errstate(invalid="ignore"):
            media_time = np.where(s <= time_, s, np.nan)  # read out before the switch: not switched
        media = np.isfinite(media_time).astype(np.int64)
    else:
        ctx, t_idx, media = slot, np.zeros(n, dtype=np.int64), slot
        media_time, time_ = np.full(n, np.nan), np.full(n, np.nan)
    return _Cells(cond, batch, eta, escaper, systematic, guide_idx, lib, ctx, t_idx, media, media_time, time_)


def _group_key(label: str, media: int, media_time: float, time: float, dynamic: bool) -> str:
    if dynamic:
        return f"{label}|m{media}|{_fmt_time(media_time)}|{_fmt_time(time)}"
    return f"{label}|m{media}"


@dataclass
class _Groups:
    """Truth groups: one per (condition, medium) or (condition, medium, switch time, read-out time)."""

    keys: list[str]
    cond: np.ndarray
    media: np.ndarray
    media_time: np.ndarray
    time: np.ndarray
    ctx: np.ndarray  # a state context that produces the group
    t_idx: np.ndarray
    code: np.ndarray  # group of each cell


def _make_groups(
    labels: list[str], cells: _Cells, switches: np.ndarray, times: np.ndarray, p: dict[str, Any]
) -> _Groups:
    dynamic = p["regime"] == "dynamic"
    rows: dict[str, tuple] = {}
    for c, label in enumerate(labels):
        if dynamic:
            for ctx, s in enumerate(switches):
                for ti, t in enumerate(times):
                    mt = s if s <= t else np.nan
                    med = int(np.isfinite(mt))
                    rows.setdefault(_group_key(label, med, mt, t, True), (c, med, mt, t, ctx, ti))
        else:
            for med in range(p["n_media"]):
                rows.setdefault(_group_key(label, med, np.nan, np.nan, False), (c, med, np.nan, np.nan, med, 0))
    keys = list(rows)
    cols = list(zip(*rows.values(), strict=True))
    index = {k: i for i, k in enumerate(keys)}
    cell_keys = (
        _group_key(labels[c], m, a, b, dynamic)
        for c, m, a, b in zip(cells.cond, cells.media, cells.media_time, cells.time, strict=True)
    )
    code = np.fromiter((index[k] for k in cell_keys), dtype=np.int64, count=cells.cond.size)
    arrays = [np.asarray(col, dtype=float if i in (2, 3) else np.int64) for i, col in enumerate(cols)]
    return _Groups(keys, *arrays, code=code)


@dataclass
class _StateGrid:
    """Noise-free states per (time, condition, context, systematic flag, efficacy level), flattened to rows."""

    flat: np.ndarray  # (times * rows, genes)
    n_rows: int
    block: dict[tuple[int, int, int], int]  # (condition, context, systematic) -> first row
    n_grid: int  # efficacy levels linspace(0, 1, n_grid), then one row at efficacy_mean

    def rows(self, c: int, ctx: int, sflag: int, ti: int, eta: np.ndarray):
        """Rows bracketing efficacies ``eta`` and the linear interpolation weight of the upper row."""
        start = ti * self.n_rows + self.block[(c, ctx, sflag)]
        if c == 0:  # controls: one row, efficacy irrelevant
            return np.full(eta.size, start), np.full(eta.size, start), np.zeros(eta.size)
        pos = np.clip(eta, 0.0, 1.0) * (self.n_grid - 1)
        i0 = np.minimum(np.floor(pos).astype(np.int64), self.n_grid - 2)
        return start + i0, start + i0 + 1, pos - i0

    def mean_row(self, c: int, ctx: int, ti: int) -> int:
        """Row of the state at the mean efficacy without the systematic response."""
        return ti * self.n_rows + self.block[(c, ctx, 0)] + (0 if c == 0 else self.n_grid)

    def interpolate(self, lo: np.ndarray, hi: np.ndarray, w: np.ndarray) -> np.ndarray:
        """States interpolated between rows ``lo`` and ``hi``."""
        return self.flat[lo] * (1.0 - w)[:, None] + self.flat[hi] * w[:, None]


def _solve_state_grid(
    net: SimulatedNetwork,
    p: dict[str, Any],
    cond_targets: list[tuple[int, ...]],
    switches: np.ndarray,
    times: np.ndarray,
    has_sys: bool,
) -> _StateGrid:
    """Solve fixed points (steady state) or RK4 trajectories (dynamic) on the efficacy grid, all rows at once."""
    dynamic = p["regime"] == "dynamic"
    levels = np.concatenate([np.linspace(0.0, 1.0, p["n_efficacy_grid"]), [p["efficacy_mean"]]])
    n_ctx = switches.size if dynamic else p["n_media"]
    block: dict[tuple[int, int, int], int] = {}
    r_cond, r_ctx, r_eta, r_sys = [], [], [], []
    for c in range(len(cond_targets)):
        for ctx in range(n_ctx):
            for sflag in (0, 1) if (c > 0 and has_sys) else (0,):
                block[(c, ctx, sflag)] = len(r_cond)
                lv = levels if c > 0 else np.zeros(1)
                r_cond += [c] * lv.size
                r_ctx += [ctx] * lv.size
                r_eta += lv.tolist()
                r_sys += [float(sflag)] * lv.size
    r_ctx, r_eta, r_sys = np.array(r_ctx), np.array(r_eta), np.array(r_sys)
    n_rows = r_ctx.size
    pair_rows = np.array([r for r, c in enumerate(r_cond) for _ in cond_targets[c]], dtype=np.int64)
    pair_cols = np.array([g for c in r_cond for g in cond_targets[c]], dtype=np.int64)
    if dynamic:
        x0, res = net._solve_fixed_points(net.production()[None, :])
        _warn_residual(res)
        t_start = float(min(0.0, np.nanmin(switches) if np.isfinite(switches).any() else 0.0))
        states = net._integrate_batch(
            np.broadcast_to(x0[0], (n_rows, net.n_genes)),
            t_start,
            times,
            media_before=np.zeros(n_rows, dtype=np.int64),
            media_after=np.ones(n_rows, dtype=np.int64),
            switch=switches[r_ctx],
            pair_rows=pair_rows,
            pair_cols=pair_cols,
            efficacy=r_eta,
            systematic=r_sys,
            onset_tau=p["onset_tau"],
        )  # (times, rows, genes)
    else:
        prod = net.alpha * net.media_effect[r_ctx]
        prod[r_sys > 0] *= np.exp(net.systematic_program)
        prod[pair_rows, pair_cols] *= net.perturbation_factor(r_eta[pair_rows])
        states, res = net._solve_fixed_points(prod)
        _warn_residual(res)
        states = states[None]
    if not np.all(np.isfinite(states)) or states.min() < 0:
        msg = "Simulated states are not finite and non-negative; lower media_strength or activation_strength."
        raise RuntimeError(msg)
    return _StateGrid(states.reshape(-1, net.n_genes), n_rows, block, p["n_efficacy_grid"])


def _cell_rows(grid: _StateGrid, cells: _Cells) -> tuple[np.ndarray, ...]:
    """Per-cell bracketing rows with the cell's systematic flag (lo, hi) and without it (lo_s, hi_s), weights."""
    n = cells.cond.size
    lo, hi, lo_s, hi_s = (np.empty(n, np.int64) for _ in range(4))
    wt = np.empty(n)
    key = np.stack([cells.cond, cells.ctx, cells.t_idx], axis=1)
    uniq, inverse = np.unique(key, axis=0, return_inverse=True)
    for k, (c, ctx, ti) in enumerate(uniq):
        sel = np.flatnonzero(inverse.ravel() == k)
        lo_s[sel], hi_s[sel], wt[sel] = grid.rows(int(c), int(ctx), 0, int(ti), cells.eta[sel])
        lo[sel], hi[sel] = lo_s[sel], hi_s[sel]
        on = sel[cells.systematic[sel]]
        if on.size:
            lo[on], hi[on], _ = grid.rows(int(c), int(ctx), 1, int(ti), cells.eta[on])
    return lo, hi, lo_s, hi_s, wt


def _measure(
    rng: np.random.Generator,
    p: dict[str, Any],
    grid: _StateGrid,
    cells: _Cells,
    groups: _Groups,
    capture: np.ndarray,
    theta: np.ndarray,
    loadings: np.ndarray,
) -> tuple[sp.csr_matrix, dict[str, np.ndarray]]:
    """Per-cell states, counts and the sums behind the truth tables, in chunks of cells.

    Sums: ``rho0`` / ``spec`` (noise-free proportions with capture 1, with and without the systematic
    response), ``xn`` (batches x groups x genes: sum of x / (x . s_b), so the mean proportion with batch b's
    capture is s_b times it over n), and over medium-0 controls per own batch ``n``, ``s1``, ``s2``
    (proportions and squares) and ``meas`` (expected measurement variance of 1e4 y / l').
    """
    n, G, B = cells.cond.size, grid.flat.shape[1], capture.shape[0]
    n_groups, pi_d = len(groups.keys), p["dropout"]
    lo, hi, lo_s, hi_s, wt = _cell_rows(grid, cells)
    ctrl0 = (cells.cond == 0) & (cells.media == 0)
    acc = {
        "rho0": np.zeros((n_groups, G)),
        "spec": np.zeros((n_groups, G)),
        "xn": np.zeros((B, n_groups, G)),
        "n": np.zeros(B),
        "s1": np.zeros((B, G)),
        "s2": np.zeros((B, G)),
        "meas": np.zeros((B, G)),
    }
    blocks = []
    for start in range(0, n, _CHUNK):
        idx = np.arange(start, min(n, start + _CHUNK))
        m = idx.size
        eps = rng.standard_normal((m, G)) * p["bio_sd"]
        if p["cell_cycle_sd"] > 0:
            eps += rng.standard_normal((m, _CELL_CYCLE_RANK)) @ loadings.T
        het = np.exp(eps)
        x = grid.interpolate(lo[idx], hi[idx], wt[idx]) * het
        codes = groups.code[idx]

        def group_sum(values: np.ndarray, weights: np.ndarray | None = None, codes=codes, m=m) -> np.ndarray:
            w = np.ones(m) if weights is None else weights
            return sp.csr_matrix((w, (codes, np.arange(m))), shape=(n_groups, m)) @ values

        rho0 = x / x.sum(axis=1, keepdims=True)
        acc["rho0"] += group_sum(rho0)
        on = np.flatnonzero(cells.systematic[idx])
        if on.size:
            xs = grid.interpolate(lo_s[idx[on]], hi_s[idx[on]], wt[idx[on]]) * het[on]
            rho0 = rho0.copy()
            rho0[on] = xs / xs.sum(axis=1, keepdims=True)
        acc["spec"] += group_sum(rho0)
        inv_norm = 1.0 / (x @ capture.T)  # (cells, batches)
        for b in range(B):
            acc["xn"][b] += group_sum(x, inv_norm[:, b])
        # measurement with the cell's own batch
        xc = x * capture[cells.batch[idx]]
        rho = xc / xc.sum(axis=1, keepdims=True)
        mu = cells.lib[idx, None] * rho
        y = rng.poisson(rng.gamma(theta, mu / theta))
        if pi_d > 0:
            y[rng.random(y.shape) < pi_d] = 0
        blocks.append(sp.csr_matrix(y.astype(np.float32)))
        c0 = np.flatnonzero(ctrl0[idx])
        if c0.size:
            r0, b0 = rho[c0], cells.batch[idx[c0]]
            lib_eff = (1.0 - pi_d) * cells.lib[idx[c0], None]
            meas = TARGET_SUM**2 * (r0 / lib_eff + r0**2 * (1.0 / theta + pi_d) / (1.0 - pi_d))
            acc["n"] += np.bincount(b0, minlength=B)
            for name, val in (("s1", r0), ("s2", r0**2), ("meas", meas)):
                np.add.at(acc[name], b0, val)
    return sp.vstack(blocks, format="csr"), acc


def _variance_components(
    acc: dict[str, np.ndarray], capture: np.ndarray, groups: _Groups, names: list[str]
) -> pd.DataFrame:
    """Delta-method variance components over medium-0 control cells (see :func:`simulate_perturbseq`)."""
    B = capture.shape[0]
    c0 = np.flatnonzero((groups.cond == 0) & (groups.media == 0))
    n_c0 = np.isin(groups.code, c0).sum()
    v_n, ok = acc["n"], acc["n"] >= 2
    with np.errstate(invalid="ignore", divide="ignore"):  # NaN when no control is in medium 0
        mean = TARGET_SUM * acc["rho0"][c0].sum(axis=0) / n_c0
        per_batch = np.log1p(TARGET_SUM * capture * acc["xn"][:, c0].sum(axis=1) / n_c0)
        batch = per_batch.var(axis=0, ddof=1) if B > 1 else np.zeros(len(names))
        m_b = acc["s1"][ok] / v_n[ok, None]
        denom = (1.0 + TARGET_SUM * m_b) ** 2
        bio = TARGET_SUM**2 * (acc["s2"][ok] - v_n[ok, None] * m_b**2) / (v_n[ok, None] - 1.0) / denom
        meas = acc["meas"][ok] / v_n[ok, None] / denom
        w = v_n[ok] / v_n[ok].sum()
    return pd.DataFrame(
        {"batch": batch, "bio": w @ bio, "meas": w @ meas, "mean": mean}, index=pd.Index(names, name="gene")
    )


def _interactions(
    grid: _StateGrid, p: dict[str, Any], cond_targets: list[tuple[int, ...]], groups: _Groups, names: list[str]
) -> pd.DataFrame:
    """Noise-free genetic interactions of the population pseudobulk (efficacy quadrature, no heterogeneity)."""
    q_eta, q_w = _efficacy_quadrature(p)
    single = {tg[0]: c for c, tg in enumerate(cond_targets) if len(tg) == 1}

    def population_log(c: int, ctx: int, ti: int) -> np.ndarray:
        xq = grid.interpolate(*grid.rows(c, ctx, 0, ti, q_eta))
        return np.log1p(TARGET_SUM * (q_w @ (xq / xq.sum(axis=1, keepdims=True))))

    rows, keys = [], []
    for i, key in enumerate(groups.keys):
        c, ctx, ti = int(groups.cond[i]), int(groups.ctx[i]), int(groups.t_idx[i])
        if len(cond_targets[c]) != 2:
            continue
        a, b = (single[g] for g in cond_targets[c])
        rows.append(
            population_log(c, ctx, ti)
            - population_log(a, ctx, ti)
            - population_log(b, ctx, ti)
            + population_log(0, ctx, ti)
        )
        keys.append(key)
    values = np.array(rows).reshape(len(rows), len(names))
    return pd.DataFrame(values, index=pd.Index(keys, name="group"), columns=names)


# ------------------------------------------------------------------------------------------------------------
# 6. The simulator
# ------------------------------------------------------------------------------------------------------------
def simulate_perturbseq(
    n_cells: int = 5000,
    n_genes: int = 200,
    *,
    n_perturbations: int = 20,
    n_combinations: int = 5,
    regime: Literal["steady_state", "dynamic"] = "steady_state",
    modality: Literal["CRISPRi", "CRISPRko", "CRISPRa"] = "CRISPRi",
    n_media: int | None = None,
    media_switch_times: Sequence[float | None] | None = (-1.0, 1.0),
    time_points: Sequence[float] = (0.5, 1.0, 2.0, 4.0),
    onset_tau: float = 0.0,
    control_fraction: float = 0.1,
    guides_per_target: int = 3,
    efficacy_mean: float = 0.8,
    efficacy_concentration: float = 10.0,
    escaper_fraction: float = 0.1,
    activation_strength: float = 3.0,
    regulator_fraction: float = 0.1,
    regulators_per_gene: float = 3.0,
    unregulated_fraction: float = 0.2,
    media_strength: float = 1.0,
    bio_sd: float = 0.2,
    cell_cycle_sd: float = 0.3,
    systematic_fraction: float = 0.6,
    systematic_strength: float = 0.5,
    fitness_sd: float = 0.0,
    n_batches: int = 3,
    batch_sd: float = 0.2,
    design: Literal["spread", "confounded", "controls_missing"] = "spread",
    library_size_mean: float = 3000.0,
    library_size_sd: float = 0.3,
    dispersion: float = 10.0,
    dropout: float = 0.0,
    alpha_sd: float = 2.0,
    n_efficacy_grid: int = 11,
    seed: int = 0,
) -> ad.AnnData:
    r"""Simulate a Perturb-seq screen from a gene-regulatory ODE and a measurement operator.

    The true network, states and noise-free pseudobulks are returned in ``uns["truth"]`` (module docstring
    for the equations). Network, perturbations, design and cells use separate random streams spawned from
    ``seed``, so the network and the chosen targets of a seed do not depend on ``n_cells`` or the design.

    Parameters
    ----------
    n_cells
        Number of cells.
    n_genes
        Number of genes (all measured; all targets are genes).
    n_perturbations
        Number of single-target perturbations (at most ``n_genes // 2``); half strong regulators (many
        downstream genes), half genes with at most one downstream gene.
    n_combinations
        Number of two-target combinations of the single targets, chosen among pairs with shared downstream genes.
    regime
        ``"steady_state"``: every cell at the fixed point of its (medium, perturbation, efficacy), cells of each
        condition (controls included) spread evenly over ``n_media`` media. ``"dynamic"``: cells start at the
        baseline control fixed point, the perturbation acts at t = 0, a switch into medium 1 happens at one of
        ``media_switch_times`` and cells are read out at one of ``time_points``.
    modality
        CRISPRi/CRISPRko scale target production by :math:`1-\eta`, CRISPRa by :math:`1+a\eta`.
    n_media
        Number of media (medium 0 is the baseline). Default: 1, or 2 in the dynamic regime with switches.
    media_switch_times
        Dynamic regime: switch times into medium 1 relative to the perturbation (negative: before it). Each cell
        gets one protocol; ``None``/NaN entries mean no switch; ``None`` alone: a plain relaxation time course.
        A cell read out before its switch is a not-switched cell (``media`` "m0", ``media_time`` NaN).
    time_points
        Dynamic regime: read-out times (days after the perturbation, >= 0).
    onset_tau
        Dynamic regime: onset delay, :math:`\eta(t) = \eta_\infty(1-e^{-t/\tau})` (0 = instantaneous). The
        systematic response ramps in the same way. Ignored in the steady-state regime.
    control_fraction
        Fraction of non-targeting control cells.
    guides_per_target
        Guides per target (labels only; all guides of a target share one efficacy distribution).
    efficacy_mean, efficacy_concentration
        Efficacy :math:`\eta_c\sim\mathrm{Beta}(m\kappa, (1-m)\kappa)`. A combination uses one shared
        :math:`\eta_c` for both targets.
    escaper_fraction
        Fraction of perturbed cells that escape (:math:`\eta_c\sim U(0, 0.05)`).
    activation_strength
        :math:`a` for CRISPRa.
    regulator_fraction
        Fraction of genes that regulate others.
    regulators_per_gene
        Mean number of regulators of a regulated gene (1 + Poisson).
    unregulated_fraction
        Fraction of genes without regulators.
    media_strength
        Scale of the log production multipliers of the media programs (~10% of genes, a third regulators).
    bio_sd
        Per-gene log-normal cell-to-cell heterogeneity.
    cell_cycle_sd
        Scale of the shared rank-2 cell-cycle-like program (0 turns it off).
    systematic_fraction
        Fraction of perturbed cells showing the shared systematic response.
    systematic_strength
        Scale of its log production multipliers (~8% of genes, mostly up); 0 turns it off.
    fitness_sd
        SD of per-target fitness effects (selection, natural-log scale; a combination's fitness is the sum of
        its targets'). With fitness, the number of cells of every condition is proportional to its design
        frequency (``control_fraction`` for the controls, the rest shared equally by the perturbations) times
        :math:`\exp(\text{fitness})`, with fitness 0 for the controls: the log ratio of a perturbation's cells
        to the controls', relative to the design, is its fitness. Without (0), the controls are exactly
        ``control_fraction`` of the cells. Selection acts on abundance only, not on expression, and is the
        same at every time point.
    n_batches
        Number of batches ``"b0"``...
    batch_sd
        SD of the log capture factors :math:`\log s_{bg}`.
    design
        ``"spread"``: every condition (controls included) spread evenly over all batches. ``"confounded"``: the
        perturbations, in random order, are assigned round robin to batches 0, 1, ..., each perturbation's cells
        all in its one batch; the controls are all in batch 0 (batch 0 may also hold perturbations, the others
        never hold controls). ``"controls_missing"``: perturbations spread over all batches, controls over all
        but the last batch.
    library_size_mean, library_size_sd
        :math:`\log \ell_c \sim N(\log(\text{mean}) - \text{sd}^2/2, \text{sd})`, so
        :math:`E[\ell_c]` = ``library_size_mean``.
    dispersion
        Typical NB inverse dispersion :math:`\theta_g` (per gene :math:`\theta\,e^{N(0, 0.25^2)}`).
    dropout
        Zero-inflation probability (0 = plain NB).
    alpha_sd
        SD of the log production rates (expression range and sparsity).
    n_efficacy_grid
        Number of efficacy levels on [0, 1] at which states are solved; cells interpolate linearly.
    seed
        Random seed.

    Returns
    -------
    AnnData with raw counts (``float32`` CSR) in ``X`` and:

    ``var``
        ``is_target`` (gene is targeted by some perturbation), ``is_regulator`` (gene regulates others).
    ``obs`` (index ``"cell_000000"``...)
        ``perturbation`` (categorical: ``"NT"``, ``"G0012"``, ``"G0012+G0045"``), ``batch`` (categorical
        ``"b0"``...), ``media`` (categorical ``"m0"``...), ``efficacy`` (true :math:`\eta_c`, 0 for controls),
        ``guide`` (``"G0012_g2"``, ``"G0012_g1+G0045_g3"``, ``"NT_g1"``), ``n_targets`` (0/1/2),
        ``true_library_size`` (:math:`\ell_c`); in the dynamic regime also ``time`` (days since the
        perturbation) and ``media_time`` (switch time into ``media``, NaN if not switched).
    ``uns["simulation"]``
        All parameters (resolved: ``n_media``; ``media_switch_times`` as a list with NaN for no switch;
        ``time_points`` sorted), plus ``regime``, ``seed``, ``n_regulators``, ``var_mean_threshold``.
    ``uns["truth"]``
        Network (:meth:`SimulatedNetwork.to_truth`): ``W``, ``alpha``, ``gamma``, ``basal``, ``offset``,
        ``baseline``, ``media_effect`` (media x genes multipliers), ``systematic_program`` (log multipliers),
        ``modality``, ``activation_strength``, ``gene_names``. Also: ``theta`` (NB inverse dispersions),
        ``cell_cycle_loadings`` (genes x 2), ``targets`` (single targets), ``combinations`` (labels),
        ``conditions`` (all condition labels, NT first), ``fitness`` (DataFrame per perturbed condition:
        ``fitness``, ``n_cells``, ``design_frequency`` the condition's share of the guide library before
        selection; the controls' share is ``control_fraction``), ``cell_systematic`` and ``cell_escaper``
        (bool per cell, in ``obs`` order).

        *Groups.* Truth tables are indexed by group keys (:func:`simulation_group_keys`):
        ``"{condition}|{media}"`` (steady state) or ``"{condition}|{media}|{media_time}|{time}"`` (dynamic).
        ``groups`` is a DataFrame with one row per possible group (also empty ones): ``condition``, ``media``,
        ``media_time``, ``time`` (NaN in the steady-state regime), ``n_targets``, ``n_cells``.

        ``steady_state``: DataFrame (groups x genes) of true states at efficacy ``efficacy_mean`` without the
        systematic response (the state at the read-out time in the dynamic regime); ``control_residual``:
        :math:`\|f(x^\star_\varnothing; m_0)\|_2` of the solved baseline control state.

        ``mean_log``: DataFrame (groups x genes) of :math:`\log(1 + 10^4 \bar\rho)` with
        :math:`\bar\rho` the mean over the group's realised cells of their noise-free proportions
        (capture 1): the truth behind :func:`~scmech.data._pseudobulk.pseudobulk` without batch effect and
        without measurement noise (conditional on the cells' states, efficacies, heterogeneity and systematic
        flags); NaN rows for empty groups. ``mean_log_specific``: the same with the systematic response switched
        off in every cell (equal to ``mean_log`` for controls). ``mean_log_batch``: the same with the capture of
        each batch, index ``"{group}|{batch}"`` for every group and batch (counterfactual where the group has
        no cells in that batch).

        ``interaction``: DataFrame (combination groups x genes),
        :math:`L(A{+}B) - L(A) - L(B) + L(\varnothing)` in the same medium/protocol/time, with :math:`L` the
        population pseudobulk :math:`\log(1+10^4 E_\eta[\rho(x(\eta))])` over the efficacy distribution
        (exact quadrature, no heterogeneity, no systematic response): the noise-free genetic interaction.
        (The same contrast of ``mean_log`` also carries finite-cell noise and :math:`-1\times` the systematic
        shift, since the control lacks it.)

        Variance components on the scale of :math:`\log(1 + 10^4\bar\rho)`, by the delta method, over control
        cells in medium 0 (any time point; all sit at the baseline fixed point): ``var_components`` (genes x
        ``batch``, ``bio``, ``meas``, ``mean``). ``mean`` is :math:`10^4 E_c[\rho^0_{cg}]` (capture 1).
        Per batch ``b`` with own capture: ``bio`` = :math:`\mathrm{Var}_c(10^4\rho_{cg})/(1+10^4 m_{bg})^2`,
        ``meas`` = :math:`E_c[\mathrm{Var}(10^4 y_{cg}/\ell'_c)]/(1+10^4 m_{bg})^2` with the ZINB variance and
        :math:`\ell'_c=(1-\pi)\ell_c` (the expected total count, standing in for the observed total used by
        pseudobulks; its randomness is ignored), both averaged over batches weighted by their control counts.
        ``batch`` = variance over the realised batches (ddof=1; 0 for one batch) of the noise-free control
        pseudobulk with each batch's capture over all medium-0 controls. A pseudobulk of ``n`` controls of batch
        ``b`` thus varies by about ``(bio + meas) / n`` around its batch's value. Scalars ``var_batch``,
        ``var_bio``, ``var_meas``: means over genes with ``mean >= var_mean_threshold`` (1 count per 10^4).
        ``batch_log_capture``: DataFrame (batches x genes) of :math:`\log s_{bg}`.

    Examples
    --------
    >>> adata = simulate_perturbseq(2000, 100, n_perturbations=6, n_combinations=2, seed=1)
    >>> adata.obs["perturbation"].cat.categories[0]
    'NT'
    >>> from scmech.data._pseudobulk import pseudobulk
    >>> keys = simulation_group_keys(adata.obs)
    >>> observed = pseudobulk(adata, keys)
    >>> truth = adata.uns["truth"]["mean_log"].loc[observed.index]
    """
    p = _validate(locals())
    rng_net, rng_pert, rng_design, rng_cells = np.random.default_rng(p["seed"]).spawn(4)
    net, extra = _build_network(rng_net, p)
    G, names = net.n_genes, net.gene_names
    singles, pairs = _choose_perturbations(rng_pert, net, p["n_perturbations"], p["n_combinations"])
    fit_single = dict(zip(singles, rng_pert.normal(0.0, 1.0, len(singles)) * p["fitness_sd"], strict=True))

    # conditions: NT, singles, combinations (canonical labels, targets sorted)
    cond_targets: list[tuple[int, ...]] = [(), *[(g,) for g in singles], *pairs]
    labels = [CONTROL_LABEL] + ["+".join(sorted(names[g] for g in tg)) for tg in cond_targets[1:]]
    fitness = np.array([sum(fit_single[g] for g in tg) for tg in cond_targets[1:]])
    dynamic = p["regime"] == "dynamic"
    switches = np.asarray(p["media_switch_times"], dtype=float) if dynamic else np.array([np.nan])
    times = np.asarray(p["time_points"], dtype=float) if dynamic else np.array([np.nan])
    has_sys = p["systematic_fraction"] > 0 and p["systematic_strength"] > 0

    # design, states, measurement
    cells = _design_cells(rng_design, p, fitness, switches, times)
    capture = np.exp(rng_design.normal(0.0, 1.0, (p["n_batches"], G)) * p["batch_sd"])
    if not has_sys:
        cells.systematic[:] = False
    groups = _make_groups(labels, cells, switches, times, p)
    grid = _solve_state_grid(net, p, cond_targets, switches, times, has_sys)
    X, acc = _measure(rng_cells, p, grid, cells, groups, capture, extra["theta"], extra["cell_cycle"])

    # truth tables
    gidx = pd.Index(groups.keys, name="group")
    bnames = [f"b{b}" for b in range(p["n_batches"])]
    n_g = np.bincount(groups.code, minlength=len(groups.keys)).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):  # empty groups give NaN rows
        mean_log = np.log1p(TARGET_SUM * acc["rho0"] / n_g[:, None])
        mean_spec = np.log1p(TARGET_SUM * acc["spec"] / n_g[:, None])
        mean_batch = np.log1p(TARGET_SUM * capture[None, :, :] * acc["xn"].transpose(1, 0, 2) / n_g[:, None, None])
    mb_index = pd.Index([f"{k}|{b}" for k in groups.keys for b in bnames], name="group_batch")
    ss_rows = [
        grid.mean_row(int(c), int(x), int(t)) for c, x, t in zip(groups.cond, groups.ctx, groups.t_idx, strict=True)
    ]
    x_ctrl = grid.flat[grid.mean_row(0, 0, 0)] if not dynamic else net.steady_state()
    var_comp = _variance_components(acc, capture, groups, names)
    expressed = var_comp["mean"].to_numpy() >= _VAR_MEAN_THRESHOLD

    # AnnData
    guide = [
        "+".join(f"{names[t]}_g{gi}" for t, gi in zip(cond_targets[c], gix, strict=False))
        if c
        else f"{CONTROL_LABEL}_g{gix[0]}"
        for c, gix in zip(cells.cond, cells.guide_idx, strict=True)
    ]
    n = cells.cond.size
    width = max(6, len(str(n - 1)))
    obs = pd.DataFrame(
        {
            "perturbation": pd.Categorical.from_codes(cells.cond, categories=labels),
            "batch": pd.Categorical.from_codes(cells.batch, categories=bnames),
            "media": pd.Categorical.from_codes(cells.media, categories=[f"m{i}" for i in range(p["n_media"])]),
            "efficacy": cells.eta.astype(np.float64),
            "guide": pd.Categorical(guide),
            "n_targets": np.array([len(cond_targets[c]) for c in cells.cond], dtype=np.int64),
            "true_library_size": cells.lib.astype(np.float64),
        },
        index=pd.Index([f"cell_{i:0{width}d}" for i in range(n)]),
    )
    if dynamic:
        obs["time"] = cells.time.astype(np.float64)
        obs["media_time"] = cells.media_time.astype(np.float64)
    var = pd.DataFrame(
        {
            "is_target": np.isin(np.arange(G), [g for tg in cond_targets for g in tg]),
            "is_regulator": (net.W != 0).any(axis=0),
        },
        index=pd.Index(names),
    )
    groups_df = pd.DataFrame(
        {
            "condition": [labels[c] for c in groups.cond],
            "media": [f"m{m}" for m in groups.media],
            "media_time": groups.media_time,
            "time": groups.time,
            "n_targets": np.array([len(cond_targets[c]) for c in groups.cond], dtype=np.int64),
            "n_cells": n_g.astype(np.int64),
        },
        index=gidx,
    )
    fitness_df = pd.DataFrame(
        {
            "fitness": fitness,
            "n_cells": np.bincount(cells.cond, minlength=len(labels))[1:].astype(np.int64),
            "design_frequency": _design_frequency(p, len(labels))[1:],
        },
        index=pd.Index(labels[1:], name="condition"),
    )

    def gene_mean(col: str) -> float:
        return float(var_comp[col][expressed].mean()) if expressed.any() else float("nan")

    truth: dict[str, Any] = net.to_truth()
    truth.update(
        {
            "theta": extra["theta"],
            "cell_cycle_loadings": extra["cell_cycle"],
            "targets": [names[g] for g in singles],
            "combinations": [lab for lab, tg in zip(labels, cond_targets, strict=True) if len(tg) == 2],
            "conditions": list(labels),
            "fitness": fitness_df,
            "cell_systematic": cells.systematic.copy(),
            "cell_escaper": cells.escaper.copy(),
            "groups": groups_df,
            "steady_state": pd.DataFrame(grid.flat[ss_rows], index=gidx, columns=names),
            "control_residual": float(np.linalg.norm(net.f(x_ctrl))),
            "mean_log": pd.DataFrame(mean_log, index=gidx, columns=names),
            "mean_log_specific": pd.DataFrame(mean_spec, index=gidx, columns=names),
            "mean_log_batch": pd.DataFrame(mean_batch.reshape(-1, G), index=mb_index, columns=names),
            "interaction": _interactions(grid, p, cond_targets, groups, names),
            "var_components": var_comp,
            "var_batch": gene_mean("batch"),
            "var_bio": gene_mean("bio"),
            "var_meas": gene_mean("meas"),
            "batch_log_capture": pd.DataFrame(np.log(capture), index=pd.Index(bnames, name="batch"), columns=names),
        }
    )
    sim = dict(p)
    sim["time_points"] = [float(t) for t in p["time_points"]]
    sim["media_switch_times"] = [float(s) for s in p["media_switch_times"]]
    sim["n_regulators"] = int(var["is_regulator"].sum())
    sim["var_mean_threshold"] = _VAR_MEAN_THRESHOLD
    sim["control_label"] = CONTROL_LABEL
    adata = ad.AnnData(X=X, obs=obs, var=var)
    adata.uns["simulation"] = sim
    adata.uns["truth"] = truth
    return adata
