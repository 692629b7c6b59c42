"""Preprocessing: guide assignment from guide-capture counts."""

from ._guides import assign_guides

__all__ = ["assign_guides"]
