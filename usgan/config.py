"""Typed configs: frozen dataclasses built from YAML mappings, rejecting unknown keys."""

from __future__ import annotations

from usgan.errors import UserError

import dataclasses
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(UserError):
    """A config file or mapping that does not fit its dataclass."""


def from_mapping(cls: type[T], mapping: dict[str, Any], where: str = "config") -> T:
    """Build dataclass `cls` from a (nested) mapping; unknown keys and wrong nesting raise ConfigError."""
    if not isinstance(mapping, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(mapping).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(mapping) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(fields)}")
    values = {}
    for name, value in mapping.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            value = from_mapping(hint, value or {}, f"{where}.{name}")
        elif isinstance(value, list):
            value = tuple(value)
        values[name] = value
    return cls(**values)


def to_mapping(config: Any) -> dict[str, Any]:
    """The inverse of from_mapping, with tuples as lists (YAML/JSON friendly)."""
    def convert(value: Any) -> Any:
        if isinstance(value, tuple):
            return [convert(v) for v in value]
        if isinstance(value, dict):
            return {k: convert(v) for k, v in value.items()}
        return value
    return convert(dataclasses.asdict(config))


def load_config(cls: type[T], path: Path | None, overrides: dict[str, Any] | None = None) -> T:
    """Load `cls` from a YAML file (or its defaults when path is None), then apply dotted-key overrides."""
    mapping: dict[str, Any] = {}
    if path is not None:
        try:
            mapping = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as error:
            raise ConfigError(f"{path}: cannot read config: {str(error).splitlines()[0]}") from error
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        node = mapping
        *parents, leaf = dotted.split(".")
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return from_mapping(cls, mapping, str(path) if path else cls.__name__)


def flatten(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mapping -> {dotted key: leaf value}: {'optim': {'g_lr': 1e-4}} -> {'optim.g_lr': 1e-4}."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(value, dict):
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat
