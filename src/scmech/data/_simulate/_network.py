"""The true gene-regulatory ODE of a simulation: its vector field, fixed points and trajectories.

:class:`SimulatedNetwork` holds the parameters of the dynamics (layer 1 of the ``scmech.data._simulate`` package
docstring, which gives the equations and why the simulator's acyclic networks have a unique, globally stable fixed
point) and evaluates :math:`f`, its Jacobian, fixed points (batched fixed-point iteration with an RK4 + Newton
fallback) and RK4 trajectories of perturbation protocols (a perturbation at t = 0 with an onset ramp and a media
switch). The random networks of the simulator are drawn in ``_random_network``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp
from scipy.special import expit

from ._limits import check_times

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

__all__ = ["SimulatedNetwork"]

_MODALITIES = ("CRISPRi", "CRISPRko", "CRISPRa")
#: RK4 step (days)
_DT = 0.05
#: relative residual max|f| / max(gamma * x) above which a steady-state solve counts as not converged
_RES_TOL = 1e-8


def _gene_names(n: int) -> list[str]:
    """Default gene names ``"G0000"``, ``"G0001"``... (at least four digits)."""
    width = max(4, len(str(n - 1)))
    return [f"G{i:0{width}d}" for i in range(n)]


@dataclass(eq=False)
class SimulatedNetwork:
    r"""The true gene-regulatory ODE of a simulation.

    :math:`f(x) = \alpha \odot \mu_m \odot u_p(\eta) \odot e^{\sigma\pi} \odot h(x) - \gamma \odot x` with
    :math:`h_g(x) = b_g + (1-b_g)\,\mathrm{sigmoid}(\sum_j W_{gj} x_j / k_j + c_g)` (docstring of the
    ``scmech.data._simulate`` package).

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
        """Return the indices of target genes given by name (``"G0012"``) or position.

        Parameters
        ----------
        targets
            One target or a sequence of them: gene names of :attr:`gene_names` or positions.

        Returns
        -------
        Positions of the targets (``int64``), in the given order.
        """
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
        r"""Production multiplier of a target at efficacy :math:`\eta`: :math:`1-\eta` or :math:`1+a\eta`.

        Parameters
        ----------
        efficacy
            Efficacy :math:`\eta\in[0,1]` (a scalar or an array).

        Returns
        -------
        The multiplier, shaped like ``efficacy``: :math:`1+a\eta` for ``"CRISPRa"``, :math:`1-\eta` otherwise.
        """
        eta = np.asarray(efficacy, dtype=np.float64)
        if not np.all((eta >= 0.0) & (eta <= 1.0)):
            msg = f"efficacy={efficacy!r} is out of range; expected values in [0, 1]."
            raise ValueError(msg)
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
        """Sigmoid argument :math:`z = W (x/k) + c` for a state (genes) or states (n x genes).

        Parameters
        ----------
        x
            State (genes) or states (n x genes).

        Returns
        -------
        :math:`z`, same shape as ``x``.
        """
        x = np.asarray(x, dtype=np.float64)
        u = x / self.baseline
        z = self._W_csr @ u if x.ndim == 1 else (self._W_csr @ u.T).T
        return z + self.offset

    def h(self, x: np.ndarray) -> np.ndarray:
        r"""Saturating production :math:`h(x) = b + (1-b)\,\mathrm{sigmoid}(W x/k + c)`.

        Parameters
        ----------
        x
            State (genes) or states (n x genes).

        Returns
        -------
        :math:`h(x)`, same shape as ``x``.
        """
        return self.basal + (1.0 - self.basal) * expit(self.regulatory_input(x))

    def _field(self, x: np.ndarray, prod: np.ndarray) -> np.ndarray:
        """Vector field for given production rates (one row per state)."""
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
        r"""Jacobian :math:`\partial f/\partial x` (genes x genes) at a state ``x``; arguments as in :meth:`f`.

        Parameters
        ----------
        x
            State (genes).
        media, targets, efficacy, systematic
            Condition, as in :meth:`production`.

        Returns
        -------
        The Jacobian (genes x genes).
        """
        prod = self.production(media, targets, efficacy, systematic)
        return self._jacobian(np.asarray(x, dtype=np.float64), prod)

    def _jacobian(self, x: np.ndarray, prod: np.ndarray) -> np.ndarray:
        """Jacobian at ``x`` for given production rates."""
        s = expit(self.regulatory_input(x))
        dh = (1.0 - self.basal) * s * (1.0 - s)
        jac = (prod * dh)[:, None] * self.W / self.baseline[None, :]
        jac[np.diag_indices_from(jac)] -= self.gamma
        return jac

    def _relative_residual(self, x: np.ndarray, prod: np.ndarray) -> np.ndarray:
        """Per row, max|f| / max(gamma * x): how far a state is from a fixed point."""
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
        """Polish a fixed point with Newton's method (states clipped at 0)."""
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

    def _rk4(
        self, x: np.ndarray, t0: float, t1: float, prod_fn: Callable[[float], np.ndarray], dt: float
    ) -> np.ndarray:
        """Integrate from ``t0`` to ``t1`` with classical RK4 in equal steps of at most ``dt``."""
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
        check_times(t, dt)
        if np.shape(x0) != (self.n_genes,):
            msg = f"x0 has shape {np.shape(x0)}; pass one state per gene, shape ({self.n_genes},)."
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
        """Return the network's parameters as plain arrays (the network part of ``uns["truth"]``).

        Returns
        -------
        A dict of arrays and numbers.
        """
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
        if not isinstance(truth, dict):
            msg = f"truth must be the dict adata.uns['truth'] of simulate_perturbseq, got {type(truth).__name__}."
            raise TypeError(msg)
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
    """Warn (attributed to the caller's caller) when some relative residuals exceed ``_RES_TOL`` or are NaN."""
    bad = ~(np.asarray(res) <= _RES_TOL)
    if bad.any():
        msg = (
            f"{int(bad.sum())} of {bad.size} steady-state solves did not converge "
            f"(largest relative residual {np.nanmax(res):.2e} > {_RES_TOL:.0e})."
        )
        warnings.warn(msg, UserWarning, stacklevel=3)
