"""Pipeline parameters come from the stage configs: every compiled default and UI description is checked
against the dg_core Config field it sets, and the pipeline sources restate no default."""

from __future__ import annotations

import ast
import dataclasses
import importlib
from pathlib import Path

import pytest
import yaml

import pipelines
from dg_core.stages import get_stage
from pipelines._params import INTERNAL, PARAMS, Field, Own

ROOT = Path(pipelines.__file__).resolve().parent
KFP_TYPE = {float: "NUMBER_DOUBLE", int: "NUMBER_INTEGER", str: "STRING", bool: "BOOLEAN", list: "LIST",
            dict: "STRUCT"}  # fmt: skip


def compiled(name: str) -> dict:
    return next(yaml.safe_load_all(pipelines.compiled_path(name).read_text()))


def config_field(stage: str, name: str) -> tuple[dataclasses.Field, type]:
    """The field straight from the stage module (not through pipelines._params)."""
    import typing

    cfg = get_stage(stage).load().Config
    f = {f.name: f for f in dataclasses.fields(cfg)}[name]
    tp = typing.get_type_hints(cfg)[name]
    return f, typing.get_origin(tp) or tp


def _default(f: dataclasses.Field):
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


@pytest.mark.parametrize("name", list(pipelines.PIPELINES))
def test_compiled_defaults_and_descriptions_are_the_stage_fields(name):
    params = compiled(name)["root"]["inputDefinitions"]["parameters"]
    checked = 0
    for pname, spec in params.items():
        assert spec.get("description", "").strip(), f"{name}.{pname} has no description in the Kubeflow UI"
        decl = PARAMS[pname]
        if isinstance(decl, Own):
            assert spec["description"] == decl.help
            continue
        f, tp = config_field(decl.stage, decl.field)
        help_text = " ".join(f.metadata["help"].split())
        assert spec["description"].startswith(help_text), f"{name}.{pname}: description is not {decl.stage}'s help"
        assert spec["parameterType"] == KFP_TYPE[tp], f"{name}.{pname}: type differs from {decl.stage}.{decl.field}"
        value = spec["defaultValue"]
        if tp is int:
            value = int(value)
        if decl.default is Field.__dataclass_fields__["default"].default:  # same default as the stage
            assert value == _default(f), f"{name}.{pname}: default {value!r} != {decl.stage}.{decl.field}"
        else:  # a pipeline-specific default must say so, and why, in the UI
            assert value == decl.default and value != _default(f)
            assert decl.why in spec["description"] and repr(_default(f)) in spec["description"]
        checked += 1
    assert checked >= 4


@pytest.mark.parametrize("name", ["calibrate", "reharden"])
def test_sub_pipeline_inputs_are_described(name):
    comps = compiled(name)["components"]
    subs = [c for c in comps if c.startswith("comp-dguard-")]
    assert subs
    for c in subs:
        for pname, spec in comps[c]["inputDefinitions"]["parameters"].items():
            assert spec.get("description", "").strip(), f"{name}: {c}.{pname} has no description"
            assert pname in PARAMS or pname in INTERNAL


def test_the_knob_defaults_are_declared_once():
    """eta, beta, steps, group size, lr and min_retention come from the stage; no pipeline restates them."""
    for name in pipelines.PIPELINES:
        tree = ast.parse((ROOT / f"{name}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and any("pipeline" in ast.unparse(d) for d in node.decorator_list):
                assert not node.args.defaults and not any(node.args.kw_defaults), f"{name}.py: {node.name} defaults"
    cal = compiled("calibrate")["root"]["inputDefinitions"]["parameters"]
    reh = compiled("reharden")["root"]["inputDefinitions"]["parameters"]
    for pname, (stage, field) in {"eta": ("calibrate", "eta"), "beta": ("calibrate", "beta"),
                                  "calibrate_steps": ("calibrate", "steps"), "group_size": ("calibrate", "group_size"),
                                  "lr": ("calibrate", "lr"), "min_retention": ("gate", "min_retention")}.items():  # fmt: skip
        want = _default(config_field(stage, field)[0])
        assert cal[pname]["defaultValue"] == reh[pname]["defaultValue"] == want, pname


def test_a_changed_stage_default_reaches_the_pipeline(monkeypatch):
    """Generated, not copied: change the stage field and the pipeline parameter follows."""
    from pipelines import _params

    cfg = importlib.import_module("dg_core.calibrate.grpo").CalibrationSettings
    f = {f.name: f for f in dataclasses.fields(cfg)}["beta"]
    monkeypatch.setattr(f, "default", 0.125)
    assert _params.default("beta") == 0.125
    assert "[calibrate.beta]" in _params.describe("beta")


def test_undeclared_parameters_and_source_defaults_fail_with_one_line():
    from dg_core.errors import DGError
    from pipelines._params import parameters

    def p1(etta: float):
        pass

    with pytest.raises(DGError, match="'etta'.*declare it in pipelines/_params.py"):
        parameters(p1)

    def p2(eta: float = -1.0):
        pass

    with pytest.raises(DGError, match="defaults come from pipelines/_params.py"):
        parameters(p2)
