"""One run_stage for the CLI and the components: the same config from a mapping, a file or key=value overrides,
logged once with secrets masked."""

from __future__ import annotations

import json
import logging

import pytest

from components import _common
from dg_core import cli, stages
from dg_core.errors import DGError


def _records() -> list[dict]:
    out = [{"model": "teacher", "teacher": w, "accuracy": a} for w, a in (("original", 1.0), ("calibrated", 0.98))]
    for w, a in (("original", 0.9), ("calibrated", 0.3)):
        out.append({"model": "student", "teacher": w, "student": "s", "method": "sft", "seed": 0, "accuracy": a})
    return out


def test_cli_and_components_share_one_run_stage(tmp_path, caplog):
    assert _common.run_stage is stages.run_stage is cli.run_stage
    caplog.set_level(logging.INFO, logger="dguard")
    from_values = stages.run_stage("gate", {"evaluations": _records()}, {"min_retention": 0.99})
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps({"gate": {"evaluations": _records()}}))
    from_file = stages.run_stage("gate", overrides=["min_retention=0.99"], config_path=str(cfg))
    from_strings = stages.run_stage("gate", {"evaluations": _records()}, ["min_retention=0.99"])
    assert from_values == from_file == from_strings and from_values["passed"] is False  # retention 0.98 < 0.99
    assert caplog.text.count("gate config:") == 3 and '"min_retention": 0.99' in caplog.text
    with pytest.raises(DGError, match="both config values and a config file"):
        stages.run_stage("gate", {"evaluations": _records()}, config_path=str(cfg))
