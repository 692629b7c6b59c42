"""The argument checks every layer shares (``scmech._numbers``)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from scmech._numbers import check_flag, check_positive_int


@pytest.mark.parametrize("value", [1, 7, np.int64(3), np.int32(2)])
def test_positive_whole_numbers_come_back_as_python_ints(value):
    out = check_positive_int(value, "n")
    assert out == int(value)
    assert type(out) is int


@pytest.mark.parametrize("value", [0, -1, 2.0, 1.5, "3", True, False, None, np.float64(2.0)])
def test_anything_else_is_refused_naming_the_argument_and_value(value):
    with pytest.raises(ValueError, match=rf"^{re.escape(f'n={value!r}')} must be a positive integer\.$"):
        check_positive_int(value, "n")


def test_none_passes_only_when_allowed_and_the_hint_replaces_the_default_text():
    assert check_positive_int(None, "batch_size", allow_none=True) is None
    with pytest.raises(ValueError, match=r"^batch_size=0 must be a positive integer \(or None for the default\)\.$"):
        check_positive_int(0, "batch_size", allow_none=True)
    with pytest.raises(ValueError, match=r"^k=0 must be a positive integer, e\.g\. k=5\.$"):
        check_positive_int(0, "k", hint=", e.g. k=5")


@pytest.mark.parametrize("value", [True, False, np.True_, np.False_])
def test_check_flag_returns_python_bools(value):
    out = check_flag(value, "copy")
    assert type(out) is bool
    assert out == bool(value)


@pytest.mark.parametrize("value", ["no", "False", 0, 1, None, [True]])
def test_check_flag_refuses_what_would_read_as_a_flag(value):
    with pytest.raises(TypeError, match=re.escape(f"copy={value!r} must be True or False.")):
        check_flag(value, "copy")
