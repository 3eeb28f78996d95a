"""`common.http.int_param`, the one reader of integer query parameters: a bad value is a 400."""

from __future__ import annotations

import pytest

from sesflow.common.errors import InputError
from sesflow.common.http import int_param


@pytest.mark.parametrize(("raw", "expected"), [(None, 7), ("", 7), ("1", 1), ("0042", 42)])
def test_absent_or_in_range(raw: str | None, expected: int) -> None:
    assert int_param(raw, "limit", 7, 1, 100) == expected


@pytest.mark.parametrize(
    "raw", ["0", "101", "-1", "+5", " 5", "1_0", "1.0", "x", "²", "9" * 5000, "1e3"]
)
def test_anything_else_is_an_input_error_naming_the_parameter(raw: str) -> None:
    with pytest.raises(InputError) as caught:
        int_param(raw, "limit", 7, 1, 100)
    assert (caught.value.error, caught.value.status) == ("invalid_parameter", 400)
    assert caught.value.detail == "limit must be an integer in 1..100"
