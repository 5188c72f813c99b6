"""The seven expressions: one canonical list, the paper's folder codes and common aliases."""

from __future__ import annotations

from usgan.errors import UserError

from typing import Literal, get_args

import numpy as np

Expression = Literal["angry", "disgusted", "fearful", "happy", "neutral", "sad", "surprised"]
EXPRESSIONS: tuple[Expression, ...] = get_args(Expression)

# The paper's data-set folder codes (RaFD-style), in canonical order.
PAPER_CODES: dict[str, Expression] = {
    "ANS": "angry",
    "DIS": "disgusted",
    "AFS": "fearful",
    "HAS": "happy",
    "NES": "neutral",
    "SAS": "sad",
    "SUS": "surprised",
}

# The official code is StarGAN's: its data set is torchvision's ImageFolder over folders named by these codes, and
# ImageFolder numbers classes in sorted folder-name order. So the official generator's one-hot channel k means
# PAPER_CODES[sorted(PAPER_CODES)[k]]: fearful, angry, disgusted, happy, neutral, sad, surprised.
OFFICIAL_LABEL_ORDER: tuple[Expression, ...] = tuple(PAPER_CODES[code] for code in sorted(PAPER_CODES))

_ALIASES: dict[str, Expression] = {
    "anger": "angry",
    "mad": "angry",
    "disgust": "disgusted",
    "disgusting": "disgusted",
    "fear": "fearful",
    "afraid": "fearful",
    "scared": "fearful",
    "happiness": "happy",
    "joy": "happy",
    "smile": "happy",
    "smiling": "happy",
    "calm": "neutral",
    "sadness": "sad",
    "unhappy": "sad",
    "surprise": "surprised",
}


class UnknownExpressionError(UserError):
    """Raised for a name that is neither canonical, a paper code nor an alias."""


def parse_expression(name: str) -> Expression:
    """Return the canonical expression for a canonical name, paper code or alias (case-insensitive)."""
    key = name.strip()
    if key.upper() in PAPER_CODES:
        return PAPER_CODES[key.upper()]
    key = key.lower()
    if key in EXPRESSIONS:
        return key  # type: ignore[return-value]
    if key in _ALIASES:
        return _ALIASES[key]
    raise UnknownExpressionError(
        f"unknown expression {name!r}; valid: {', '.join(EXPRESSIONS)} "
        f"(or the paper's codes {', '.join(PAPER_CODES)})"
    )


def expression_index(name: str) -> int:
    """Return the position of an expression (any accepted spelling) in EXPRESSIONS."""
    return EXPRESSIONS.index(parse_expression(name))


def one_hot(name: str) -> np.ndarray:
    """Return the (7,) float32 one-hot vector for an expression."""
    vector = np.zeros(len(EXPRESSIONS), dtype=np.float32)
    vector[expression_index(name)] = 1.0
    return vector


def check_expression_numbers(table: object, name: str, error: type[Exception], low: float = -np.inf,
                             high: float = np.inf, open_low: bool = False) -> None:
    """Raise error (one line, naming the setting) unless table maps canonical expression names to finite numbers in
    [low, high] ((low, high] with open_low): the one rule for every per-expression setting of a file or a config."""
    if not isinstance(table, dict):
        raise error(f"{name} must be a mapping expression -> number, got {table!r}")
    for key, value in table.items():
        if key not in EXPRESSIONS:
            raise error(f"{name}: unknown expression {key!r}; valid: {', '.join(EXPRESSIONS)}")
        number = isinstance(value, (int, float)) and not isinstance(value, bool) and bool(np.isfinite(value))
        if number and low <= value <= high and not (open_low and value == low):
            continue
        if np.isinf(low):
            wanted = "a number"
        elif np.isinf(high):
            wanted = f"{'above' if open_low else 'at least'} {low:g}"
        else:
            wanted = f"in {'(' if open_low else '['}{low:g}, {high:g}]"
        raise error(f"{name}.{key} must be {wanted}, got {value!r}")
