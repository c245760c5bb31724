"""Typed configs: YAML + overrides, coercion, and one-line errors naming field, value and what is allowed."""

from dataclasses import dataclass

import pytest

from dg_core.config import StageConfig, from_dict, load_config, option
from dg_core.errors import DGError


@dataclass
class Inner(StageConfig):
    r: int = option(8, "LoRA rank.", ge=1)


@dataclass
class Demo(StageConfig):
    eta: float = option(-1.0, "The knob.")
    steps: int = option(30, "RL steps.", gt=0)
    method: str = option("sft", "Distillation method.", choices=["sft", "kd"])
    proxies: list[str] = option(["zoo:proxy"], "Proxy models.")
    lora: Inner = option(default_factory=Inner)
    note: str | None = option(None, "Optional note.")
    verbose: bool = option(False, "More output.")

    def check(self) -> None:
        if self.method == "kd" and self.eta > 5:
            raise DGError("fields 'method' and 'eta': kd with eta > 5 is not supported")


def test_yaml_and_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("eta: 0.5\nsteps: 10\nlora:\n  r: 4\nproxies: [a, b]\n")
    cfg = load_config(Demo, f, ["steps=12", "lora.r=16", "verbose=true", "proxies=x,y"])
    assert (cfg.eta, cfg.steps, cfg.lora.r, cfg.verbose, cfg.proxies) == (0.5, 12, 16, True, ["x", "y"])


def test_section_of_a_shared_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("demo:\n  eta: 2\nother:\n  x: 1\n")
    assert load_config(Demo, f, section="demo").eta == 2.0


@pytest.mark.parametrize(
    "override, words",
    [
        ("eta=abc", ["'eta'", "'abc'", "number"]),
        ("steps=0", ["'steps'", "> 0"]),
        ("steps=1.5", ["'steps'", "integer"]),
        ("method=xtok", ["'method'", "'xtok'", "sft"]),
        ("lora.r=0", ["'lora.r'", ">= 1"]),
        ("etaa=1", ["unknown config field 'etaa'", "eta"]),
        ("verbose=maybe", ["'verbose'", "true or false"]),
        ("noequals", ["key=value"]),
    ],
)
def test_bad_values_name_field_value_and_allowed(override, words):
    with pytest.raises(DGError) as e:
        load_config(Demo, None, [override])
    msg = str(e.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg


def test_cross_field_check_and_from_dict():
    with pytest.raises(DGError, match="method"):
        from_dict(Demo, {"method": "kd", "eta": 9})
    assert from_dict(Demo, {"note": None}).note is None


def test_missing_or_invalid_file(tmp_path):
    with pytest.raises(DGError, match="not found"):
        load_config(Demo, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("eta: [1,\n")
    with pytest.raises(DGError, match="invalid YAML"):
        load_config(Demo, bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(DGError, match="mapping"):
        load_config(Demo, lst)


def test_help_rows_document_every_field():
    rows = {name: help_ for name, _, _, help_ in Demo.help_rows()}
    assert rows["lora.r"] == "LoRA rank."
    assert all(rows[k] for k in ("eta", "steps", "method", "proxies"))
