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


@dataclass
class Knobs(StageConfig):
    eta: float = option(-1.0, "The knob.")
    lr: float = option(1e-3, "Learning rate.", gt=0)
    steps: int = option(30, "RL steps.", gt=0)
    splits: dict = option({"train": 0.8, "test": 0.2}, "Split fractions.")
    records: list[dict] = option([], "Records.")
    scores: list[float] = option([], "Scores.")
    lora: Inner = option(default_factory=Inner)
    name: str = option("", "A name (the text 'nan' is just text).")


@pytest.mark.parametrize(
    "override, field",
    [
        ("eta=nan", "'eta'"),
        ("eta=.nan", "'eta'"),
        ("eta=inf", "'eta'"),
        ("eta=-.inf", "'eta'"),
        ("eta=-Infinity", "'eta'"),
        ("lr=inf", "'lr'"),
        ("lr=1e999", "'lr'"),
        ("splits={train: .nan, test: 1.0}", "'splits.train'"),
        ("records=[{accuracy: 1.0}, {accuracy: .inf}]", "'records[1].accuracy'"),
        ("scores=[0.5, nan]", "'scores[1]'"),
    ],
)
def test_non_finite_numbers_are_refused_in_every_field(override, field):
    with pytest.raises(DGError, match="expected a finite number") as e:
        load_config(Knobs, None, [override])
    assert field in str(e.value) and "\n" not in str(e.value)


def test_non_finite_numbers_are_refused_from_yaml_and_mappings(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("eta: .inf\n")
    with pytest.raises(DGError, match="'eta': got inf, expected a finite number"):
        load_config(Knobs, f)
    with pytest.raises(DGError, match="'lora.r'"):
        from_dict(Knobs, {"lora": {"r": float("nan")}})
    with pytest.raises(DGError, match="'steps'"):
        from_dict(Knobs, {"steps": float("inf")})
    assert load_config(Knobs, None, ["name=nan"]).name == "nan"


@dataclass
class Reads(StageConfig):
    dataset: str = option("", "Input dataset.")
    model: str = option("", "Input model.")
    proxies: list[str] = option([], "Input proxies.")
    output: str = option("", "Where to write.")


def test_output_may_not_be_an_input_nor_inside_nor_around_one(tmp_path, monkeypatch):
    ds, model = tmp_path / "ds", tmp_path / "models" / "m"
    ds.mkdir()
    model.mkdir(parents=True)
    (tmp_path / "link").symlink_to(ds)
    monkeypatch.chdir(tmp_path)
    for data, words in (
        ({"dataset": ds.as_uri(), "output": ds.as_uri()}, "is the input 'dataset'"),
        ({"dataset": str(ds), "output": "./ds/"}, "is the input 'dataset'"),  # two spellings, one place
        ({"dataset": "ds", "output": (tmp_path / "link").as_uri()}, "is the input 'dataset'"),  # via a symlink
        ({"model": model.as_uri(), "output": (model / "eval").as_uri()}, "lies inside the input 'model'"),
        ({"model": str(model), "output": str(tmp_path / "models")}, "contains the input 'model'"),
        ({"proxies": ["zoo:proxy", str(model)], "output": str(model)}, "the input 'proxies[1]'"),
        ({"dataset": "s3://bkt/data/ds", "output": "s3://bkt/data/ds/x"}, "lies inside the input 'dataset'"),
    ):
        with pytest.raises(DGError, match="config field 'output': .*" + words.replace("[", r"\[")):
            from_dict(Reads, data)
    # neighbours, other buckets, zoo members and hub ids are fine
    assert from_dict(Reads, {"dataset": str(ds), "output": str(tmp_path / "ds2")}).output
    assert from_dict(Reads, {"dataset": "s3://bkt/data/ds", "output": "s3://other/data/ds"}).output
    assert from_dict(Reads, {"model": "zoo:teacher", "proxies": ["org/name"], "output": "org/name2"}).output


def test_evaluate_output_at_its_dataset_is_refused_and_the_dataset_kept(tmp_path, capsys):
    from dg_core.cli import main

    ds = tmp_path / "ds"
    ds.mkdir()
    (ds / "train.jsonl").write_text("{}\n")
    rc = main(["evaluate", f"dataset={ds.as_uri()}", "model=zoo:proxy", f"output={ds.as_uri()}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and "is the input 'dataset'" in err[-1]
    assert sorted(p.name for p in ds.iterdir()) == ["train.jsonl"]


def test_a_late_field_at_its_default_leaves_addresses_and_hashes_as_they_were():
    from dg_core.checkpoint import config_hash
    from dg_core.config import addressed

    @dataclass
    class Before(StageConfig):
        lr: float = option(1e-3, "learning rate")

    @dataclass
    class After(StageConfig):
        lr: float = option(1e-3, "learning rate")
        guide: str = option("", "added later", late=True)
        tags: list = option(["a"], "added later", late=True)

    assert addressed(After()) == addressed(Before()) == {"lr": 1e-3}
    assert config_hash(After()) == config_hash(Before())
    assert addressed(After(guide="x", tags=["b"])) == {"lr": 1e-3, "guide": "x", "tags": ["b"]}
    assert config_hash(After(guide="x")) != config_hash(Before())
