"""``key=value`` pipeline arguments, typed by the compiled pipeline's own parameter definitions.

`dguard run` and `dguard submit` both read the parameter types from ``pipelines/compiled/<name>.yaml`` so that
a typo or a wrongly typed value fails here, with one line, instead of minutes later inside a cluster.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from dg_core.errors import DGError

_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


def read_parameters(package: str | Path) -> dict[str, dict[str, Any]]:
    """name -> {"type": KFP parameterType, "default": value or None, "required": bool} of a compiled pipeline."""
    p = Path(package)
    if not p.is_file():
        raise DGError(f"compiled pipeline {str(p)!r} not found: run `dguard compile` first")
    try:
        doc = next(yaml.safe_load_all(p.read_text()))
    except (yaml.YAMLError, StopIteration) as e:
        raise DGError(f"compiled pipeline {str(p)!r}: not a KFP pipeline YAML ({e})") from None
    if not isinstance(doc, dict) or "root" not in doc:
        raise DGError(f"compiled pipeline {str(p)!r}: not a KFP pipeline YAML (no 'root' section)")
    params = doc["root"].get("inputDefinitions", {}).get("parameters", {}) or {}
    out = {}
    for name, spec in params.items():
        has_default = "defaultValue" in spec
        out[name] = {
            "type": spec.get("parameterType", "STRING"),
            "default": spec.get("defaultValue"),
            "required": not has_default and not spec.get("isOptional", False),
        }
    return out


def _coerce(name: str, raw: str, kind: str) -> Any:
    where = f"pipeline argument '{name}'"
    if kind == "STRING":
        return raw
    if kind == "BOOLEAN":
        if raw.strip().lower() in _TRUE + _FALSE:
            return raw.strip().lower() in _TRUE
        raise DGError(f"{where}: got {raw!r}, expected true or false")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    if kind == "NUMBER_INTEGER":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or float(value) != int(value):
            raise DGError(f"{where}: got {raw!r}, expected an integer")
        return int(value)
    if kind == "NUMBER_DOUBLE":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise DGError(f"{where}: got {raw!r}, expected a number")
        return float(value)
    if kind == "LIST":
        if isinstance(value, str) and not raw.strip().startswith("["):
            value = [v.strip() for v in raw.split(",") if v.strip()]  # a,b,c as in `dguard <stage>` overrides
        if not isinstance(value, list):
            raise DGError(f"{where}: got {raw!r}, expected a list such as [a, b]")
        return value
    if kind == "STRUCT":
        if not isinstance(value, dict):
            raise DGError(f"{where}: got {raw!r}, expected a mapping such as {{key: value}}")
        return value
    return value


def parse_arguments(package: str | Path, overrides: Iterable[str]) -> dict[str, Any]:
    """Typed arguments for the pipeline compiled at ``package`` from ``key=value`` strings.

    Only the keys given are returned (the rest keep the defaults compiled into the pipeline).
    """
    params = read_parameters(package)
    args: dict[str, Any] = {}
    for text in overrides:
        if "=" not in text:
            raise DGError(f"pipeline argument {text!r}: expected key=value (for example eta=-0.5)")
        key, raw = text.split("=", 1)
        key = key.strip()
        if key not in params:
            raise DGError(f"unknown pipeline argument '{key}' (known: {', '.join(sorted(params))})")
        args[key] = _coerce(key, raw, params[key]["type"])
    missing = [k for k, v in params.items() if v["required"] and k not in args]
    if missing:
        raise DGError(f"pipeline argument '{missing[0]}' is required: pass {missing[0]}=VALUE")
    return args
