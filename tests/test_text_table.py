"""The terminal table every text report prints: its exact layout."""

from __future__ import annotations

import pytest

from devicedefender_audit.text_table import table


def test_columns_are_as_wide_as_their_widest_cell_and_lines_carry_no_trailing_space():
    assert table(("FILE", "N", "DETAIL"), [("a.pem", 2048, ""), ("long-name.pem", None, "100% x ")]) == (
        "FILE           N     DETAIL\n"
        "-------------  ----  -------\n"
        "a.pem          2048\n"
        "long-name.pem  None  100% x"
    )


def test_headers_alone():
    assert table(("A", "BB"), []) == "A  BB\n-  --"


@pytest.mark.parametrize("row", [("x",), ("x", "y", "z")])
def test_a_row_of_the_wrong_length_is_an_error(row):
    with pytest.raises(TypeError):
        table(("A", "B"), [row])
