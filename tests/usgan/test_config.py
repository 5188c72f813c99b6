from dataclasses import dataclass, field

import pytest

from usgan.config import ConfigError, flatten, from_mapping


def test_flatten_gives_dotted_keys_and_keeps_leaf_values():
    assert flatten({"a": 1, "b": {"c": 2, "d": {"e": [3]}}}) == {"a": 1, "b.c": 2, "b.d.e": [3]}


@dataclass(frozen=True)
class Rates:
    lr: float = 1e-4
    per_target: dict[str, float] = field(default_factory=dict)


@pytest.mark.parametrize("mapping, message", [
    ({"lr": float("nan")}, "mine.yaml: lr must be a number, got nan"),
    ({"lr": float("inf")}, "mine.yaml: lr must be a number, got inf"),
    ({"per_target": {"sad": float("-inf")}}, "mine.yaml: per_target.sad must be a number, got -inf"),
])
def test_a_number_is_finite(mapping, message):
    assert from_mapping(Rates, {"lr": 2, "per_target": {"sad": 1.5}}, "mine.yaml") == Rates(2, {"sad": 1.5})
    with pytest.raises(ConfigError, match=f"^{message}$"):
        from_mapping(Rates, mapping, "mine.yaml")
