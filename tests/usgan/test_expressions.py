"""Expression names: one canonical order, the paper's codes, aliases, and helpful errors."""

from __future__ import annotations

from typing import get_args

import numpy as np
import pytest

from usgan.errors import UserError
from usgan.expressions import (
    EXPRESSIONS,
    PAPER_CODES,
    Expression,
    UnknownExpressionError,
    check_expression_numbers,
    expression_index,
    one_hot,
    parse_expression,
)


def test_canonical_order_is_fixed():
    # The one-hot layout of every checkpoint depends on this order; changing it silently breaks all weights.
    assert EXPRESSIONS == ("angry", "disgusted", "fearful", "happy", "neutral", "sad", "surprised")
    assert EXPRESSIONS == get_args(Expression)


@pytest.mark.parametrize("name", EXPRESSIONS)
def test_one_hot_marks_the_canonical_index(name):
    vector = one_hot(name)
    assert vector.dtype == np.float32 and vector.shape == (7,)
    assert vector.sum() == 1.0 and vector[EXPRESSIONS.index(name)] == 1.0


@pytest.mark.parametrize(
    "code,expected",
    [("ANS", "angry"), ("DIS", "disgusted"), ("AFS", "fearful"), ("HAS", "happy"), ("NES", "neutral"),
     ("SAS", "sad"), ("SUS", "surprised")],
)
def test_paper_codes(code, expected):
    assert parse_expression(code) == expected
    assert PAPER_CODES[code] == expected


@pytest.mark.parametrize(
    "alias,expected",
    [("anger", "angry"), ("disgust", "disgusted"), ("fear", "fearful"), ("scared", "fearful"), ("joy", "happy"),
     ("smile", "happy"), ("calm", "neutral"), ("sadness", "sad"), ("surprise", "surprised")],
)
def test_aliases(alias, expected):
    assert parse_expression(alias) == expected


@pytest.mark.parametrize("spelling,expected", [("HaPpY", "happy"), ("  sad ", "sad"), ("ans", "angry"),
                                               ("Surprise", "surprised"), ("NES", "neutral")])
def test_case_and_whitespace_insensitive(spelling, expected):
    assert parse_expression(spelling) == expected
    assert expression_index(spelling) == EXPRESSIONS.index(expected)


@pytest.mark.parametrize("name", ["contempt", "", "happy!"])
def test_unknown_name_lists_the_valid_names(name):
    with pytest.raises(UnknownExpressionError) as raised:
        parse_expression(name)
    message = str(raised.value)
    assert isinstance(raised.value, UserError)
    assert "\n" not in message and repr(name) in message
    assert all(valid in message for valid in EXPRESSIONS)


def test_check_expression_numbers_is_one_rule_for_every_per_expression_table():
    check_expression_numbers({"happy": 1.5, "sad": 0}, "gains", ValueError, 0.0)  # in range: no error
    for table, message in [({"happy": True}, "gains.happy must be at least 0, got True"),
                           ({"happy": float("inf")}, "gains.happy must be at least 0, got inf"),
                           ({"happy": 0}, r"gains.happy must be above 0, got 0"),
                           ({"Happy": 1}, "gains: unknown expression 'Happy'")]:
        with pytest.raises(ValueError, match=message):
            check_expression_numbers(table, "gains", ValueError, 0.0, open_low=table == {"happy": 0})
    with pytest.raises(UserError, match=r"gains.sad must be in \(0, 4\], got 5"):
        check_expression_numbers({"sad": 5}, "gains", UserError, 0.0, 4.0, open_low=True)
