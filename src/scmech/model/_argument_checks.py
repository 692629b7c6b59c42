"""Checks of the arguments that scvi-tools' inherited methods would pass, unchecked, to numpy, scipy or torch.

scvi-tools' ``get_*`` methods index the data with ``indices`` and batch them with ``batch_size`` as given: a
position past the last cell fails inside scipy, a boolean mask of the wrong length is read as positions 0 and 1,
and a numpy integer batch size fails inside torch's sampler with a message that calls it invalid. These helpers
refuse such arguments by name, before any library sees them.
"""

from __future__ import annotations

import math
import numbers
from typing import TYPE_CHECKING

import numpy as np

from scmech._numbers import check_flag, check_positive_int

from ._intervals import check_level

if TYPE_CHECKING:
    from collections.abc import Sequence

    import torch

__all__ = [
    "check_batch_size",
    "check_device",
    "check_flag",
    "check_module_settings",
    "check_gene_list",
    "check_indices",
    "check_not_unassigned",
    "check_positive_int",
    "check_predict_arguments",
    "module_settings",
]

#: how to turn cell names into positions, for the messages
NAMES_TO_POSITIONS = "np.flatnonzero(adata.obs_names.isin(names))"


def check_indices(indices, n_obs: int, name: str = "indices", *, none_means: str = "every cell") -> np.ndarray | None:
    """Return ``indices`` as integer positions of ``n_obs`` cells, refusing what would fail or misread inside scvi.

    Parameters
    ----------
    indices
        Positions (negative ones count from the end, as in numpy) or a boolean mask; ``None`` for every cell.
    n_obs
        Number of cells of the data they index.
    name
        Argument name for the messages.
    none_means
        What ``None`` selects, for the message about an empty selection.

    Returns
    -------
    The positions (``None`` when ``indices`` is ``None``).

    Raises
    ------
    TypeError
        For names, fractional positions or other non-integer values.
    ValueError
        For an empty selection, a mask of another length, nested positions, or positions outside the cells.
    """
    if indices is None:
        return None
    arr = np.asarray(indices)
    if arr.ndim > 1:
        msg = f"{name} has shape {arr.shape}; pass a flat list of cell positions (or a boolean mask of the cells)."
        raise ValueError(msg)
    arr = np.atleast_1d(arr)
    if arr.size == 0:
        msg = f"{name} is empty: pass the indices of at least one cell, or {name}=None for {none_means}."
        raise ValueError(msg)
    if arr.dtype == bool:
        if len(arr) != n_obs:
            msg = f"{name} is a boolean mask of length {len(arr)} for {n_obs} cells; give one value per cell."
            raise ValueError(msg)
        if not arr.any():
            msg = f"{name} is a boolean mask that selects no cell; select at least one, or pass {name}=None."
            raise ValueError(msg)
        return np.flatnonzero(arr)
    if not np.issubdtype(arr.dtype, np.integer):
        msg = (
            f"{name} must be integer cell positions or a boolean mask, got {arr.dtype} values "
            f"({arr[:3].tolist()}...). Positions of cell names: {NAMES_TO_POSITIONS}."
        )
        raise TypeError(msg)
    bad = arr[(arr >= n_obs) | (arr < -n_obs)]
    if bad.size:
        msg = f"{name} holds positions outside the {n_obs} cells (e.g. {bad[:3].tolist()}); valid: 0..{n_obs - 1}."
        raise ValueError(msg)
    return arr.astype(np.int64)


def check_not_unassigned(targets: Sequence[str], unassigned_label: str | Sequence[str] | None) -> None:
    """Refuse the unassigned label (cells without a guide call) as a target to predict.

    Parameters
    ----------
    targets
        The targets of one requested condition.
    unassigned_label
        The registered unassigned label(s) (``None``: none).

    Raises
    ------
    ValueError
        When a target is an unassigned label.
    """
    if unassigned_label is None:
        return
    unassigned = {unassigned_label} if isinstance(unassigned_label, str) else {str(u) for u in unassigned_label}
    for t in targets:
        if t in unassigned:
            msg = (
                f"{t!r} is the unassigned label (cells without a guide call), not a perturbation target; "
                "it cannot be predicted. Predict the control label for unperturbed cells."
            )
            raise ValueError(msg)


def check_batch_size(batch_size, name: str = "batch_size") -> int | None:
    """Return a minibatch size as a Python ``int`` (torch's sampler refuses numpy integers), or ``None``.

    Parameters
    ----------
    batch_size
        Cells per minibatch; ``None`` for scvi-tools' default.
    name
        Argument name for the message.

    Returns
    -------
    The size (or ``None``).

    Raises
    ------
    ValueError
        For anything but a positive whole number or ``None``.
    """
    return check_positive_int(batch_size, name, allow_none=True)


def check_gene_list(gene_list, var_names: Sequence[str], name: str = "gene_list") -> list[str] | None:
    """Return ``gene_list`` as a list of the model's genes, refusing genes it does not have by name.

    Parameters
    ----------
    gene_list
        One gene (a string) or several; ``None`` for every gene.
    var_names
        The model's genes.
    name
        Argument name for the message.

    Returns
    -------
    The genes (``None`` when ``gene_list`` is ``None``).

    Raises
    ------
    KeyError
        When a gene is not one of the model's (scvi-tools would drop it silently, or fail on an empty list).
    ValueError
        For an empty list.
    """
    if gene_list is None:
        return None
    genes = [gene_list] if isinstance(gene_list, str) else list(gene_list)
    if not genes:
        msg = f"{name} is empty; name at least one gene, or pass {name}=None for every gene."
        raise ValueError(msg)
    known = set(map(str, var_names))
    missing = [g for g in genes if str(g) not in known]
    if missing:
        msg = f"{name} holds genes the model does not have: {missing[:5]} (see model.adata.var_names)."
        raise KeyError(msg)
    return genes


#: module arguments the model fills from the registered data (or from its own arguments), not a user's settings
FROM_DATA = (
    "n_input",
    "n_batch",
    "n_targets",
    "target_gene_index",
    "n_media",
    "n_cats_per_cov",
    "n_continuous_cov",
)


def module_settings(module_cls: type) -> list[str]:
    """Return the keyword arguments ``module_cls`` takes, through the ``**kwargs`` it passes on to its bases.

    Parameters
    ----------
    module_cls
        The module class.
    """
    import inspect

    names: list[str] = []
    for klass in module_cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        params = inspect.signature(klass.__init__).parameters.values()
        names += [p.name for p in params if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return list(dict.fromkeys(names))


def check_module_settings(module_cls: type, settings: dict, model_name: str, given: Sequence[str] = ()) -> None:
    """Refuse a module setting that no module takes, or one the model fills itself, naming the nearest setting.

    Python's own message ("SemiMechVAE.__init__() got an unexpected keyword argument") names a class the user never
    called; a setting the model fills from the data failed with "got multiple values".

    Parameters
    ----------
    module_cls
        The model's module class.
    settings
        The ``**module_kwargs`` the user passed.
    model_name
        The model's class name, for the message.
    given
        Module arguments the model passes itself (its own arguments and those from the data).

    Raises
    ------
    TypeError
        Naming the first unknown setting, the nearest valid one and the list of valid ones.
    """
    import difflib

    valid = [n for n in module_settings(module_cls) if n not in FROM_DATA]
    filled = sorted(set(settings) & (set(FROM_DATA) | set(given)))
    if filled:
        name = filled[0]
        how = "from the registered data" if name in FROM_DATA else f"from {model_name}'s own argument of that name"
        msg = f"{name}={settings[name]!r} is set by {model_name} {how}; drop it from the keyword arguments."
        raise TypeError(msg)
    unknown = sorted(set(settings) - set(valid))
    if unknown:
        name = unknown[0]
        close = difflib.get_close_matches(name, valid, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        msg = f"{model_name} has no setting {name}={settings[name]!r}{hint}. Its settings: {', '.join(sorted(valid))}."
        raise TypeError(msg)


def check_device(device) -> torch.device:
    """Return ``device`` as a :class:`torch.device` that exists here, refusing one torch cannot parse or reach.

    torch reports a device it cannot parse with its whole list of device types, and an absent GPU with "Torch not
    compiled with CUDA enabled" (an ``AssertionError``) at the first tensor moved.

    Parameters
    ----------
    device
        ``"cpu"``, ``"cuda"``, ``"cuda:1"``, a GPU index, or a :class:`torch.device`.

    Raises
    ------
    ValueError
        For a device string torch cannot parse, or a GPU this machine does not have.
    """
    import torch

    if isinstance(device, bool) or not isinstance(device, str | int | np.integer | torch.device):
        msg = f"device={device!r} must be 'cpu', 'cuda', 'cuda:<index>', a GPU index or a torch.device."
        raise ValueError(msg)
    try:
        dev = (
            device
            if isinstance(device, torch.device)
            else torch.device(int(device) if isinstance(device, np.integer) else device)
        )
    except (RuntimeError, ValueError) as e:
        msg = f"device={device!r} is not a device torch knows; pass 'cpu', 'cuda', 'cuda:<index>' or a GPU index."
        raise ValueError(msg) from e
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0 or (dev.index is not None and dev.index >= n):
            have = "no CUDA GPU" if n == 0 else f"{n} CUDA GPU(s), indices 0..{n - 1}"
            msg = f"device={device!r}: this machine has {have}. Pass 'cpu' or an existing GPU."
            raise ValueError(msg)
    if dev.type == "mps" and not torch.backends.mps.is_available():
        msg = f"device={device!r}: Apple's MPS is not available here. Pass 'cpu'."
        raise ValueError(msg)
    return dev


def check_predict_arguments(
    *,
    n_cells: int | None,
    random_state: int | None,
    efficacy: float | None,
    batch_size: int | None,
    anchor: str,
    batch_mix: str,
    batch: str | None,
    interval: float | None,
) -> float | None:
    """Check ``SemiMechVI.predict``'s scalar arguments, naming each bad value and the fix; return the interval level.

    Raises
    ------
    TypeError
        For an efficacy or an interval level that is not a number.
    ValueError
        For a value out of its range, an unknown ``anchor`` or ``batch_mix``, or ``batch_mix="controls"`` with a
        ``batch``.
    """
    if n_cells is not None and (not _whole(n_cells) or n_cells < 1):
        msg = f"n_cells={n_cells!r} must be a whole number of starting cells, at least 1 (or None)."
        raise ValueError(msg)
    if random_state is not None and (not _whole(random_state) or random_state < 0):
        msg = f"random_state={random_state!r} must be a non-negative integer seed (or None)."
        raise ValueError(msg)
    if efficacy is not None and (isinstance(efficacy, bool) or not isinstance(efficacy, numbers.Real)):
        msg = f"efficacy={efficacy!r} must be one number in [0, 1] (fraction of knock-down; 1 = full effect)."
        raise TypeError(msg)
    if efficacy is not None and not (0.0 <= float(efficacy) <= 1.0):
        msg = f"efficacy={efficacy} must be in [0, 1] (fraction of knock-down; 1 = full effect)."
        raise ValueError(msg)
    check_positive_int(batch_size, "batch_size", allow_none=True, hint=" (cells per minibatch), or None for 1024")
    if anchor not in ("auto", "combinations", "none"):
        msg = f"anchor={anchor!r} is not one of 'auto', 'combinations', 'none'."
        raise ValueError(msg)
    if batch_mix not in ("observed", "controls"):
        msg = f"batch_mix={batch_mix!r} is not one of 'observed', 'controls'."
        raise ValueError(msg)
    if batch_mix == "controls" and batch is not None:
        msg = (
            f"batch_mix='controls' with batch={batch!r}: a prediction measured in one batch moves every "
            "observation to that batch, whatever composition it starts from. Pass one of them."
        )
        raise ValueError(msg)
    return check_level(interval)


def _whole(value: object) -> bool:
    """Whether ``value`` is a finite whole number (``3`` or ``3.0``; not ``True``, ``NaN``, ``inf`` or ``"3"``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    return math.isfinite(float(value)) and float(value).is_integer()
