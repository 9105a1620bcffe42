"""Typed configuration: dataclasses, loaded from YAML/JSON, with one type-checked ``a.b=c`` override path.

    cfg = load_config("configs/train/stage1_cpu.yaml", TrainConfig, overrides=["optim.lr=1e-3"])

Unknown keys, wrong types and bad values raise ``CompactVLMError`` naming the key and the expected type.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar, get_args, get_origin

from .errors import CompactVLMError

T = TypeVar("T")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check/convert ``value`` to the annotated type ``tp``."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except CompactVLMError as e:
                errors.append(str(e))
        raise CompactVLMError(f"config key {key!r}: {value!r} is not a {_type_name(tp)}", "fix the value's type")
    if origin is typing.Literal:
        if value not in get_args(tp):
            raise CompactVLMError(f"config key {key!r}: {value!r} is not one of {list(get_args(tp))}", "pick one of those")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise CompactVLMError(f"config key {key!r} must be a mapping, got {value!r}", f"give the fields of {tp.__name__}")
        return from_dict(tp, value, prefix=key + ".")
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise CompactVLMError(f"config key {key!r} must be a list, got {value!r}", "write it as [a, b, ...]")
        args = get_args(tp)
        inner = args[0] if args else Any
        return [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise CompactVLMError(f"config key {key!r} must be a mapping, got {value!r}", "write it as {k: v}")
        args = get_args(tp)
        vt = args[1] if len(args) == 2 else Any
        return {k: _coerce(v, vt, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise CompactVLMError(f"config key {key!r} must be true/false, got {value!r}", "write true or false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise CompactVLMError(f"config key {key!r} must be an integer, got {value!r}", "write a whole number")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise CompactVLMError(f"config key {key!r} must be a number, got {value!r}", "write a number like 1e-3")
    if tp is str:
        if isinstance(value, str):
            return value
        raise CompactVLMError(f"config key {key!r} must be a string, got {value!r}", "quote the value")
    return value


def from_dict(cls: type[T], data: dict, prefix: str = "") -> T:
    if not isinstance(data, dict):
        raise CompactVLMError(f"config {prefix or cls.__name__} must be a mapping", "check the file's structure")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(fields)
    if unknown:
        raise CompactVLMError(
            f"unknown config key(s) {', '.join(prefix + u for u in sorted(unknown))}",
            f"valid keys here: {', '.join(prefix + f for f in fields)}",
        )
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    try:
        obj = cls(**kwargs)
    except TypeError as e:
        raise CompactVLMError(f"config {prefix or cls.__name__}: {e}", "add the missing keys") from None
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return obj


def to_dict(obj: Any) -> Any:
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj


def parse_value(text: str) -> Any:
    """CLI values are YAML scalars/lists: 1e-3, true, [3, 6], null, text."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``a.b=c`` strings to a plain dict (types are checked when the dataclass is built)."""
    data = json.loads(json.dumps(data))
    for ov in overrides:
        if "=" not in ov:
            raise CompactVLMError(f"override {ov!r} is not of the form key=value", "write e.g. optim.lr=1e-3")
        key, raw = ov.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for p in parts[:-1]:
            nxt = node.get(p)
            if nxt is None:
                nxt = node[p] = {}
            if not isinstance(nxt, dict):
                raise CompactVLMError(f"override {key!r}: {p!r} is not a section", "check the key path")
            node = nxt
        node[parts[-1]] = parse_value(raw)
    return data


def read_file(path: str | Path) -> dict:
    p = Path(path)
    if not p.exists():
        raise CompactVLMError(f"config file not found: {p}", "check the path (shipped configs are under configs/)")
    text = p.read_text()
    try:
        if p.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
    except Exception as e:  # noqa: BLE001 - any parse error is the user's file
        raise CompactVLMError(f"cannot parse config {p}: {e}", "fix the YAML/JSON syntax") from None
    if not isinstance(data, dict):
        raise CompactVLMError(f"config {p} must be a mapping at the top level", "write key: value pairs")
    base = data.pop("_base_", None)
    if base:
        parent = read_file(p.parent / base)
        data = _deep_merge(parent, data)
    return data


def _deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(path: str | Path | None, cls: type[T], overrides: list[str] | None = None) -> T:
    data = read_file(path) if path else {}
    return from_dict(cls, apply_overrides(data, overrides or []))
