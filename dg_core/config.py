"""Typed stage configs: documented dataclasses, loaded from YAML and overridden with ``key=value``.

Every stage declares one ``@dataclass`` subclass of :class:`StageConfig`. Each field carries its help text
(and optionally ``choices``, ``ge``/``gt``/``le``/``lt`` bounds) in ``field(metadata=...)``; the same
metadata drives validation, ``dguard <stage> --help`` and the KFP component docstrings. A bad value fails
with one line naming the field, the value and what is allowed.

Example::

    @dataclass
    class CalibrateConfig(StageConfig):
        eta: float = option(-1.0, "Knob: <0 undistillable, >0 distillable, 0 plain RFT.")
        group_size: int = option(8, "Samples per prompt.", ge=2)

    cfg = load_config(CalibrateConfig, "calib.yaml", ["eta=0.5"])
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from dg_core.errors import DGError
from dg_core.store import parse_uri
from dg_core.utils import check_device

T = TypeVar("T", bound="StageConfig")

_MISSING = dataclasses.MISSING


def option(
    default: Any = _MISSING,
    help: str = "",
    *,
    choices: typing.Sequence[Any] | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    default_factory: Any = _MISSING,
    late: bool = False,
) -> Any:
    """A documented, validated dataclass field (help text and constraints live in its metadata).

    ``late``: the field was added after results were stored under addresses that hash the config; while it is at
    its default it is left out of them (:func:`addressed`), so those results keep their addresses."""
    meta = {"help": help, "choices": tuple(choices) if choices else None, "ge": ge, "gt": gt, "le": le, "lt": lt}
    meta["late"] = late
    if default_factory is not _MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    if isinstance(default, (list, dict, set)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def addressed(config: Any) -> dict[str, Any]:
    """``asdict(config)`` less the ``late`` fields still at their default: what content addresses and config
    hashes cover."""
    data = dataclasses.asdict(config)
    for f in dataclasses.fields(config):
        if f.metadata.get("late"):
            default = f.default_factory() if f.default_factory is not _MISSING else f.default
            if data[f.name] == default:
                del data[f.name]
    return data


@dataclasses.dataclass
class StageConfig:
    """Base of all stage configs. Subclasses add fields with :func:`option` and may extend :meth:`check`."""

    def __post_init__(self) -> None:
        _validate(self, prefix="")
        self.check()
        _check_outputs(self)
        device = getattr(self, "device", None)
        if isinstance(device, str) and device not in ("auto", "cpu"):
            try:
                check_device(device)
            except DGError as e:
                raise DGError(f"config field 'device': {e}") from None

    def check(self) -> None:
        """Cross-field validation; raise :class:`DGError` naming the fields involved."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def help_rows(cls) -> list[tuple[str, str, Any, str]]:
        """(name, type, default, help) for every field, nested fields dotted."""
        return list(_help_rows(cls, ""))


# Fields that name what a stage reads, and what it writes. Writing where an input lives (or above or inside it)
# would overwrite or corrupt the input, so it is refused for every stage at once.
INPUT_FIELDS = ("source", "model", "teacher", "student", "proxies", "calibrated", "dataset", "attacks", "evals")
INPUT_FIELDS += ("gate", "card", "release")
OUTPUT_FIELDS = ("output", "dest")


def _location(value: str, *, must_exist: bool) -> tuple[str, str] | None:
    """(store, absolute path) of a URI or local path, or None when it names no store location (``zoo:x``, a hub
    id, a malformed URI the stage will report itself). Local paths are resolved (symlinks, ``..``)."""
    import os

    value = value.strip()
    if not value or value.startswith("zoo:"):
        return None
    if "://" not in value and must_exist and not Path(value).expanduser().exists():
        return None  # a hub id such as org/name
    try:
        scheme, bucket, path = parse_uri(value)
    except DGError:
        return None
    if scheme == "s3":
        return f"s3://{bucket}", "/" + path.strip("/")
    return "file", os.path.realpath(path)


def _overlaps(a: str, b: str) -> bool:
    a, b = a.rstrip("/") or "/", b.rstrip("/") or "/"
    return a == b or a.startswith(b.rstrip("/") + "/") or b.startswith(a.rstrip("/") + "/")


def _check_outputs(cfg: Any) -> None:
    """Refuse an output that is an input, lies inside one, or contains one (one line naming both fields)."""
    names = {f.name for f in dataclasses.fields(cfg)}
    for out_name in OUTPUT_FIELDS:
        out = getattr(cfg, out_name, None) if out_name in names else None
        if not isinstance(out, str) or not (out_loc := _location(out, must_exist=False)):
            continue
        for in_name in INPUT_FIELDS:
            if in_name not in names:
                continue
            value = getattr(cfg, in_name)
            for i, v in enumerate(value if isinstance(value, (list, tuple)) else [value]):
                loc = _location(v, must_exist=True) if isinstance(v, str) else None
                if loc and loc[0] == out_loc[0] and _overlaps(loc[1], out_loc[1]):
                    field = in_name if isinstance(value, str) else f"{in_name}[{i}]"
                    a, b = loc[1].rstrip("/"), out_loc[1].rstrip("/")
                    how = "is" if a == b else ("lies inside" if b.startswith(a + "/") else "contains")
                    raise DGError(
                        f"config field '{out_name}': {out!r} {how} the input '{field}' ({v!r}); writing there would "
                        f"overwrite it: expected an {out_name} outside every input"
                    )


def _help_rows(cls: type, prefix: str):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            yield from _help_rows(tp, f"{prefix}{f.name}.")
            continue
        default = (
            f.default
            if f.default is not _MISSING
            else (f.default_factory() if f.default_factory is not _MISSING else "(required)")
        )
        yield f"{prefix}{f.name}", _type_name(tp), default, f.metadata.get("help", "")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _validate(obj: Any, prefix: str) -> None:
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        name = f"{prefix}{f.name}"
        m = f.metadata
        if m.get("choices") and value not in m["choices"]:
            raise DGError(f"config field '{name}': got {value!r}, expected one of {list(m['choices'])}")
        for key, op, word in (
            ("ge", float.__ge__, ">="),
            ("gt", float.__gt__, ">"),
            ("le", float.__le__, "<="),
            ("lt", float.__lt__, "<"),
        ):
            bound = m.get(key)
            if bound is not None and value is not None and not op(float(value), float(bound)):
                raise DGError(f"config field '{name}': got {value!r}, expected a value {word} {bound}")


def _nonfinite(value: Any, path: str = "") -> tuple[str, float] | None:
    """(where, value) of the first NaN or infinity inside ``value`` ('' for the value itself), or None."""
    if isinstance(value, float):
        return None if math.isfinite(value) else (path, value)
    if isinstance(value, dict):
        items: Any = ((f".{k}", v) for k, v in value.items())
    elif isinstance(value, (list, tuple)):
        items = ((f"[{i}]", v) for i, v in enumerate(value))
    else:
        return None
    for sub, v in items:
        found = _nonfinite(v, path + sub)
        if found is not None:
            return found
    return None


def _coerce(value: Any, tp: Any, name: str) -> Any:
    """Convert a YAML/CLI value to the annotated type, or fail naming the field. NaN and infinity are refused in
    every field, nested ones included: no setting of any stage means anything with them, and they poison
    training state (a NaN learning rate writes NaN weights)."""
    out = _coerce_any(value, tp, name)
    bad = _nonfinite(out)
    if bad is not None:
        where, got = bad
        shown = value if where == "" and isinstance(value, str) else got
        raise DGError(f"config field '{name}{where}': got {shown!r}, expected a finite number (not NaN or infinity)")
    return out


def _coerce_any(value: Any, tp: Any, name: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, name)
            except DGError as e:
                errors.append(str(e))
        raise DGError(errors[0] if errors else f"config field '{name}': got {value!r}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise DGError(f"config field '{name}': got {value!r}, expected a mapping")
        return _build(tp, value, prefix=f"{name}.")
    if origin in (list, tuple, typing.Sequence) or tp in (list, tuple):
        if isinstance(value, str):
            value = (
                _yaml_value(value, name, "a list")
                if value.strip().startswith("[")
                else [v.strip() for v in value.split(",") if v.strip()]
            )
        if not isinstance(value, (list, tuple)):
            value = [value]
        inner = args[0] if args else Any
        out = [_coerce(v, inner, f"{name}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple or tp is tuple else out
    if origin is dict or tp is dict:
        if isinstance(value, str):
            value = _yaml_value(value, name, "a mapping")
        if not isinstance(value, dict):
            raise DGError(f"config field '{name}': got {value!r}, expected a mapping")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        raise DGError(f"config field '{name}': got {value!r}, expected true or false")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, str, float)):
            raise DGError(f"config field '{name}': got {value!r}, expected an integer")
        try:
            f = float(value)
        except ValueError:
            raise DGError(f"config field '{name}': got {value!r}, expected an integer") from None
        if not f.is_integer():
            raise DGError(f"config field '{name}': got {value!r}, expected an integer")
        return int(f)
    if tp is float:
        if isinstance(value, bool):
            raise DGError(f"config field '{name}': got {value!r}, expected a number")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise DGError(f"config field '{name}': got {value!r}, expected a number") from None
    if tp is str:
        if isinstance(value, (dict, list)):
            raise DGError(f"config field '{name}': got {value!r}, expected a string")
        return "" if value is None else str(value)
    return value


def _yaml_value(text: str, name: str, what: str) -> Any:
    """A YAML flow value (``[a, b]``, ``{k: v}``) given as text, or one line saying why it is not one."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise DGError(
            f"config field '{name}': got {text[:80]!r}, expected {what} ({getattr(e, 'problem', e)})"
        ) from None
    except RecursionError:
        raise DGError(f"config field '{name}': nested too deeply, expected {what}") from None


def _build(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise DGError(
            f"unknown config field '{prefix}{unknown[0]}' for {cls.__name__} (known: {', '.join(sorted(names))})"
        )
    kwargs = {k: _coerce(v, hints[k], f"{prefix}{k}") for k, v in data.items()}
    missing = [
        f.name
        for f in dataclasses.fields(cls)
        if f.name not in kwargs and f.default is _MISSING and f.default_factory is _MISSING
    ]
    if missing:
        raise DGError(f"config field '{prefix}{missing[0]}' of {cls.__name__} is required but was not given")
    try:
        return cls(**kwargs)
    except DGError as e:
        if not prefix:
            raise
        raise DGError(str(e).replace("config field '", f"config field '{prefix}")) from None


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise DGError(f"override {text!r}: expected key=value (for example eta=-0.5)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise DGError(f"override {text!r}: empty key, expected key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except (yaml.YAMLError, RecursionError):
        value = raw
    return key.split("."), value


def merge_overrides(data: dict[str, Any], overrides: typing.Iterable[str]) -> dict[str, Any]:
    """Apply dotted ``key=value`` overrides (values parsed as YAML scalars) onto a nested mapping."""
    data = dict(data)
    for text in overrides:
        path, value = _parse_override(text)
        node = data
        for part in path[:-1]:
            child = node.get(part)
            child = dict(child) if isinstance(child, dict) else {}
            node[part] = child
            node = child
        node[path[-1]] = value
    return data


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise DGError(f"config file {str(p)!r} not found: expected a YAML file")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as e:
        raise DGError(
            f"config file {str(p)!r}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start})"
        ) from None
    except RecursionError:
        raise DGError(f"config file {str(p)!r}: nested too deeply, expected a mapping of field: value") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise DGError(f"config file {str(p)!r}{where}: invalid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(data, dict):
        raise DGError(f"config file {str(p)!r}: expected a mapping of field: value at the top level")
    return data


def load_config(
    cls: type[T],
    path: str | Path | None = None,
    overrides: typing.Iterable[str] = (),
    *,
    section: str | None = None,
) -> T:
    """Build ``cls`` from an optional YAML file (optionally one ``section`` of it) and ``key=value`` overrides."""
    data: dict[str, Any] = {}
    if path:
        data = read_yaml(path)
        if section and isinstance(data.get(section), dict):
            data = data[section]
    return _build(cls, merge_overrides(data, overrides))


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Build a config from a plain mapping (how KFP parameters arrive), with the same validation."""
    return _build(cls, dict(data))
