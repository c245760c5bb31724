"""One run_stage for the CLI and the components: the same config from a mapping, a file or key=value overrides,
logged once with secrets masked."""

from __future__ import annotations

import json
import logging

import pytest

from components import _common
from dg_core import cli, runner, store
from dg_core.errors import DGError


def _records() -> list[dict]:
    out = [{"model": "teacher", "teacher": w, "accuracy": a} for w, a in (("original", 1.0), ("calibrated", 0.98))]
    for w, a in (("original", 0.9), ("calibrated", 0.3)):
        out.append({"model": "student", "teacher": w, "student": "s", "method": "sft", "seed": 0, "accuracy": a})
    return out


def test_cli_and_components_share_one_run_stage(tmp_path, caplog):
    assert _common.run_stage is runner.run_stage is cli.run_stage
    caplog.set_level(logging.INFO, logger="dguard")
    from_values = runner.run_stage("gate", {"evaluations": _records()}, {"min_retention": 0.99})
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps({"gate": {"evaluations": _records()}}))
    from_file = runner.run_stage("gate", overrides=["min_retention=0.99"], config_path=str(cfg))
    from_strings = runner.run_stage("gate", {"evaluations": _records()}, ["min_retention=0.99"])
    assert from_values == from_file == from_strings and from_values["passed"] is False  # retention 0.98 < 0.99
    assert caplog.text.count("gate config:") == 3 and '"min_retention": 0.99' in caplog.text
    with pytest.raises(DGError, match="both config values and a config file"):
        runner.run_stage("gate", {"evaluations": _records()}, config_path=str(cfg))


def test_default_outputs_share_one_naming_scheme(tmp_path, monkeypatch):
    """Every stage names its default output <root>/<kind>/[<label>-]<key>, the key hashing kind and inputs."""
    import re

    from dg_core.calibrate.stage import Config as CalConfig
    from dg_core.calibrate.stage import default_output
    from dg_core.config import from_dict

    root = (tmp_path / "store").as_uri()
    monkeypatch.setenv("DG_STORE_ROOT", root)
    a = store.output_uri("evals", {"x": 1, "y": [1, 2]})
    assert re.fullmatch(re.escape(root) + r"/evals/[0-9a-f]{16}", a)
    assert a == store.output_uri("evals", {"y": [1, 2], "x": 1})
    assert a.rsplit("/", 1)[1] != store.output_uri("reports", {"x": 1, "y": [1, 2]}).rsplit("/", 1)[1]
    assert store.output_uri("evals", {"x": 1}, root="s3://bkt/p").startswith("s3://bkt/p/evals/")

    cal = from_dict(CalConfig, {"teacher": "zoo:teacher", "dataset": "file:///d", "eta": -1.0})
    assert re.fullmatch(re.escape(root) + r"/calibrate/zoo-teacher-eta-1-[0-9a-f]{16}", default_output(cal))
    other = from_dict(CalConfig, {"teacher": "zoo:teacher", "dataset": "file:///d", "eta": -1.0, "lr": 1e-3})
    assert default_output(other) != default_output(cal)
    gate_uri = _common.output_uri(root, "gate", {"x": 1})
    assert gate_uri == store.output_uri("runs/gate", {"x": 1}) and gate_uri.startswith(root + "/runs/gate/")
