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

Modules, in the order the simulator uses them:

``_network``
    :class:`SimulatedNetwork`, the dynamics (vector field, fixed points, trajectories).
``_params``
    Validation of the arguments of :func:`simulate_perturbseq`.
``_random_network``
    A random network, the chosen single targets and combinations, the conditions (labels, fitness).
``_cells``
    The design of the cells: conditions (allocation, selection), efficacies, batches, media and times.
``_groups``
    Truth groups and their keys (:func:`simulation_group_keys`).
``_states``
    The state grid solved per condition, context and efficacy level; each cell's rows on it.
``_measurement``
    Heterogeneity, capture, library size, counts, dropout and the sums behind the truth tables.
``_truth``
    The truth tables of ``uns["truth"]``: group means, interactions, variance components.
``_simulate``
    :func:`simulate_perturbseq`, composed of the steps above.
"""

from ._groups import simulation_group_keys
from ._network import SimulatedNetwork
from ._random_network import CONTROL_LABEL
from ._simulate import simulate_perturbseq

__all__ = ["CONTROL_LABEL", "SimulatedNetwork", "simulate_perturbseq", "simulation_group_keys"]
