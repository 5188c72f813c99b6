"""Typed configs: frozen dataclasses built from YAML mappings, every value checked against its field's type.

One schema check at load time: unknown keys, wrong nesting and values of the wrong type are a one-line ConfigError
naming the file (or the option) and the dotted key, before any work starts.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

from usgan.errors import UserError

T = TypeVar("T")
Blame = Callable[[str], str]
"""Dotted key -> where its value came from, as an error starts: 'mine.yaml: encoder.crf' or '--crf:'."""


class ConfigError(UserError):
    """A config file or mapping that does not fit its dataclass."""


def file_blame(where: str) -> Blame:
    return lambda key: f"{where}: {key}"


def from_mapping(cls: type[T], mapping: Any, where: str = "config", prefix: str = "",
                 blame: Blame | None = None) -> T:
    """Build dataclass `cls` from a (nested) mapping; unknown keys and values of the wrong type raise ConfigError."""
    blame = blame or file_blame(where)
    if not isinstance(mapping, dict):
        place = f"{blame(prefix.rstrip('.'))} must be" if prefix else f"{where}: expected"
        raise ConfigError(f"{place} a mapping of settings, got {type_name(mapping)}")
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls) if f.init]  # type: ignore[arg-type]
    unknown = sorted(set(map(str, mapping)) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(prefix + key for key in unknown)}; "
                          f"valid: {', '.join(prefix + name for name in fields)}")
    values = {name: checked(value, hints[name], prefix + name, where, blame) for name, value in mapping.items()}
    return cls(**values)


def checked(value: Any, hint: Any, key: str, where: str, blame: Blame) -> Any:
    """value as the type hint wants it (lists as tuples, strings as Paths); ConfigError naming key otherwise."""
    if dataclasses.is_dataclass(hint):
        return from_mapping(hint, {} if value is None else value, where, f"{key}.", blame)
    if get_origin(hint) is dict and isinstance(value, dict) and get_args(hint):
        return {name: checked(item, get_args(hint)[1], f"{key}.{name}", where, blame) for name, item in value.items()}
    converted = convert(value, hint)
    if converted is MISMATCH:
        raise ConfigError(f"{blame(key)} must be {describe(hint)}, got {value!r}")
    return converted


MISMATCH = object()


def convert(value: Any, hint: Any) -> Any:
    """value fitted to hint, or MISMATCH."""
    origin, args = get_origin(hint), get_args(hint)
    if hint is Any or hint is object:
        return value
    if origin in (Union, types.UnionType):
        return next((done for arg in args if (done := convert(value, arg)) is not MISMATCH), MISMATCH)
    if origin is Literal:
        return value if any(value == arg and type(value) is type(arg) for arg in args) else MISMATCH
    if hint is type(None):
        return value if value is None else MISMATCH
    if hint in (int, float, bool, str):
        return value if plain_type_fits(value, hint) else MISMATCH
    if hint is Path:
        return Path(value) if isinstance(value, (str, Path)) else MISMATCH
    if origin is tuple or hint is tuple:
        return convert_tuple(value, args)
    if origin is dict or hint is dict:
        return convert_dict(value, args)
    return value  # a type the schema does not describe: its dataclass checks it


def plain_type_fits(value: Any, hint: type) -> bool:
    if isinstance(value, bool):
        return hint is bool
    if hint is float:  # a number a config or a file header holds is finite: NaN and infinity are a mistake
        return isinstance(value, (int, float)) and math.isfinite(value)
    return isinstance(value, hint)


def convert_tuple(value: Any, args: tuple) -> Any:
    if not isinstance(value, (list, tuple)):
        return MISMATCH
    hints = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args) or [Any] * len(value)
    if len(hints) != len(value):
        return MISMATCH
    items = [convert(item, hint) for item, hint in zip(value, hints)]
    return MISMATCH if any(item is MISMATCH for item in items) else tuple(items)


def convert_dict(value: Any, args: tuple) -> Any:
    if not isinstance(value, dict):
        return MISMATCH
    key_hint, value_hint = args or (Any, Any)
    items = {convert(k, key_hint): convert(v, value_hint) for k, v in value.items()}
    return MISMATCH if MISMATCH in items or MISMATCH in items.values() else items


def describe(hint: Any) -> str:
    """What a type hint asks for, in words: 'a whole number', 'one of torch, onnx', 'a list of strings or null'."""
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(describe(arg) for arg in args)
    if origin is Literal:
        return "one of " + ", ".join(map(str, args))
    if origin is tuple or hint is tuple:
        if args and args[-1] is Ellipsis:
            return f"a list of {PLURALS.get(args[0], 'values')}"
        return f"a list of {len(args)} values" if args else "a list"
    names = {int: "a whole number", float: "a number", bool: "true or false", str: "a string", Path: "a path",
             type(None): "null"}
    return names.get(hint, "a mapping" if origin is dict or hint is dict else getattr(hint, "__name__", str(hint)))


PLURALS = {int: "whole numbers", float: "numbers", str: "strings", bool: "true/false values"}


def type_name(value: Any) -> str:
    names = {list: "a list", str: "a string", int: "a number", float: "a number", bool: "true/false"}
    return names.get(type(value), type(value).__name__)


def to_mapping(config: Any) -> dict[str, Any]:
    """The inverse of from_mapping, with tuples as lists (YAML/JSON friendly)."""
    def convert_value(value: Any) -> Any:
        if isinstance(value, tuple):
            return [convert_value(v) for v in value]
        if isinstance(value, dict):
            return {k: convert_value(v) for k, v in value.items()}
        return value
    return convert_value(dataclasses.asdict(config))


def read_yaml(path: Path, what: str = "config") -> Any:
    """A YAML file's content; unreadable, binary or malformed files are a one-line ConfigError naming the file."""
    try:
        return yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not a text (YAML) {what} file") from error
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"{path}: cannot read {what}: {str(error).splitlines()[0]}") from error


def load_config(cls: type[T], path: Path | None, overrides: dict[str, Any] | None = None,
                blame: Blame | None = None) -> T:
    """Load `cls` from a YAML file (or its defaults when path is None), then apply dotted-key overrides.

    blame: where a key's value came from, for errors (default: the file for every key)."""
    where = str(path) if path else cls.__name__
    mapping = read_yaml(path) if path is not None else {}
    mapping = {} if mapping is None else mapping
    if not isinstance(mapping, dict):
        raise ConfigError(f"{where}: expected a mapping of settings, got {type_name(mapping)}")
    for dotted, value in (overrides or {}).items():
        if value is not None:
            set_dotted(mapping, dotted, value, where)
    return from_mapping(cls, mapping, where, blame=blame)


def set_dotted(mapping: dict[str, Any], dotted: str, value: Any, where: str) -> None:
    node = mapping
    *parents, leaf = dotted.split(".")
    for depth, parent in enumerate(parents):
        node = node.setdefault(parent, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{where}: {'.'.join(parents[:depth + 1])} must be a mapping of settings")
    node[leaf] = value


def with_values(config: Any, values: dict[str, Any]) -> Any:
    """config (a frozen dataclass) with the given dotted keys replaced; None values keep config's own."""
    for key, value in values.items():
        if value is not None:
            config = replaced(config, key.split("."), value)
    return config


def replaced(config: Any, path: list[str], value: Any) -> Any:
    head, *rest = path
    return dataclasses.replace(config, **{head: replaced(getattr(config, head), rest, value) if rest else value})


def flatten(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mapping -> {dotted key: leaf value}: {'optim': {'g_lr': 1e-4}} -> {'optim.g_lr': 1e-4}."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(value, dict):
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat
