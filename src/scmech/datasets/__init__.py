"""Bundled real datasets (no network access)."""

from ._papalexi import papalexi2021

__all__ = ["papalexi2021"]
