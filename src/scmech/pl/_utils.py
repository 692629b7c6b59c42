"""Shared plotting conventions (scanpy style): ``ax``, ``show`` and ``save``."""

from __future__ import annotations

import os
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["check_ax", "finish", "get_ax"]

#: characters that end a ``save`` naming a folder (``"figs/"``)
_SEPARATORS = tuple(sep for sep in {"/", os.sep, os.altsep} if sep)


def check_ax(ax: object) -> None:
    """Raise a ``TypeError`` unless ``ax`` is ``None`` or a :class:`matplotlib.axes.Axes`.

    Parameters
    ----------
    ax
        The ``ax`` argument of a plotting function.
    """
    from matplotlib.axes import Axes

    if ax is not None and not isinstance(ax, Axes):
        msg = (
            f"ax must be a matplotlib Axes (e.g. from fig, ax = plt.subplots()) or None for a new figure, got "
            f"{type(ax).__name__} ({ax!r:.60})."
        )
        raise TypeError(msg)


def get_ax(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    """Return ``(figure, axes)``: the given axes, or a new figure of ``figsize``.

    Parameters
    ----------
    ax
        Axes to draw into, or ``None`` for a new figure.
    figsize
        Size of the new figure (inches).

    Returns
    -------
    The figure and the axes.

    Raises
    ------
    TypeError
        When ``ax`` is neither ``None`` nor a matplotlib Axes.
    """
    import matplotlib.pyplot as plt

    check_ax(ax)
    if ax is None:
        fig, ax = plt.subplots(figsize=figsize, layout="constrained")
    else:
        fig = ax.figure
    return fig, ax


def finish(ax: Axes, *, name: str, show: bool | None, save: str | Path | bool | None) -> Axes | None:
    """Save and/or show a finished plot.

    Parameters
    ----------
    ax
        The plot's axes.
    name
        Base file name used when ``save=True``.
    show
        ``True``: call :func:`matplotlib.pyplot.show` and return ``None``. ``False`` or ``None``: return the axes.
    save
        A file path (parent folders are created; the suffix sets the format, ``.png`` when it has none; a folder
        is refused), or ``True`` for
        ``scanpy.settings.figdir / f"scmech_{name}.png"``; nothing is saved when ``None`` or ``False``.

    Returns
    -------
    The axes unless ``show`` is ``True``.
    """
    import matplotlib.pyplot as plt

    if save is not None and save is not False:
        path = _save_path(ax, name, save)
        path.parent.mkdir(parents=True, exist_ok=True)
        ax.figure.savefig(path, dpi=150, bbox_inches="tight")
    if show:
        plt.show()
        return None
    return ax


def _save_path(ax: Axes, name: str, save: str | Path | bool) -> Path:
    """Return the file a plot is saved to; refuse a ``save`` that is not a path or has an unknown format.

    Parameters
    ----------
    ax
        The plot's axes (its figure knows the formats it can write).
    name
        Base file name used when ``save=True`` (path separators become ``_``).
    save
        ``True`` or a path.

    Returns
    -------
    The path, with ``.png`` added when it has no suffix.

    Raises
    ------
    TypeError
        For a ``save`` that is neither a bool, a string nor a path.
    ValueError
        For a suffix that matplotlib cannot write, or a path that names a folder: an existing one (checked before
        and after ``.png`` is added), or one ending with a path separator.
    """
    if save is True:
        import scanpy as sc

        return Path(sc.settings.figdir) / f"scmech_{_safe_name(name)}.png"
    if not isinstance(save, str | PathLike):
        msg = f"save={save!r} must be a file path (str or Path), True (scanpy.settings.figdir) or None/False."
        raise TypeError(msg)
    path = Path(save)
    example = str(path / f"{_safe_name(name)}.png")
    if path.is_dir():  # before the suffix is added: save="figs" must not become figs.png beside the folder figs
        msg = (
            f"save={str(save)!r} names the existing folder {str(path)!r}; pass a file path inside it "
            f"(e.g. save={example!r})."
        )
        raise ValueError(msg)
    if str(save).endswith(_SEPARATORS):
        msg = (
            f"save={str(save)!r} ends with a path separator, so it names a folder; pass a file path inside it "
            f"(e.g. save={example!r})."
        )
        raise ValueError(msg)
    if path.suffix == "":
        path = path.with_suffix(".png")
    if path.is_dir():  # save="figs" where figs.png is a folder
        example = str(path / f"{_safe_name(name)}.png")
        msg = (
            f"save={str(save)!r} names the existing folder {str(path)!r} once the default suffix .png is added; "
            f"pass a file path inside it (e.g. save={example!r}) or another file name."
        )
        raise ValueError(msg)
    formats = ax.figure.canvas.get_supported_filetypes()
    if path.suffix[1:].lower() not in formats:
        msg = (
            f"save={str(save)!r} has the suffix {path.suffix!r}, which is not a figure format; use one of "
            f"{sorted(formats)} (e.g. save={str(path.with_suffix('.png'))!r})."
        )
        raise ValueError(msg)
    return path


def _safe_name(name: str) -> str:
    """Return ``name`` with path separators and ``:`` replaced by ``_``, usable as a file name.

    Parameters
    ----------
    name
        Base file name of a plot (may hold a metric or a condition label).

    Returns
    -------
    The file name.
    """
    return "".join("_" if ch in "/\\:" else ch for ch in name)


def _strip(ax: Axes) -> None:
    """Hide the top and right spines of ``ax`` (the design plots' frame).

    Parameters
    ----------
    ax
        The axes.
    """
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
