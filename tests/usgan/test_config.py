from usgan.config import flatten


def test_flatten_gives_dotted_keys_and_keeps_leaf_values():
    assert flatten({"a": 1, "b": {"c": 2, "d": {"e": [3]}}}) == {"a": 1, "b.c": 2, "b.d.e": [3]}
