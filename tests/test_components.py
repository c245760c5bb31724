"""Components run for real under kfp.local (subprocesses of this environment) on a file store in tmp_path."""

# No `from __future__ import annotations`: the test pipeline below is read by kfp.
import json
from pathlib import Path

import pytest
from kfp import dsl, local

from components import _common
from components.gate.component import gate
from components.pin.component import pin_models
from components.publish.component import publish
from components.releases.component import list_releases
from dg_core import store
from dg_core.errors import DGError
from dg_core.store import content_sha

# kfp.local warns about any image without "python" in its name; ours is a Python image.
pytestmark = pytest.mark.filterwarnings("ignore:You may be attemping to run a task:RuntimeWarning")

GOOD = [
    {"model": "student", "teacher": "original", "student": "s", "method": "sft", "seed": 0, "accuracy": 0.9},
    {"model": "student", "teacher": "calibrated", "student": "s", "method": "sft", "seed": 0, "accuracy": 0.2},
]
T0 = {"model": "teacher", "teacher": "original", "accuracy": 1.0}
T1 = {"model": "teacher", "teacher": "calibrated", "accuracy": 0.99}


def put(d: Path, uri: str, payload: bytes) -> str:
    d.mkdir(parents=True, exist_ok=True)
    (d / "model.safetensors").write_bytes(payload)
    (d / "config.json").write_text("{}")
    store.publish(d, uri)
    return uri


@pytest.fixture()
def env(tmp_path, monkeypatch):
    root = (tmp_path / "store").as_uri()
    monkeypatch.setenv("DG_STORE_ROOT", root)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp"))
    return root, tmp_path


def test_pin_unpin_and_refs(env):
    root, tmp = env
    uri = put(tmp / "a", store.join(root, "models/a"), b"v1")
    ref = _common.pin(uri)
    assert ref == f"{uri}#sha256={content_sha(uri)}"
    assert _common.pin(ref) == ref and _common.unpin(ref) == uri and _common.uri_of(ref) == uri
    assert _common.pin(str(tmp / "store/models/a")) == ref  # a local path pins to its file:// form
    put(tmp / "b", uri, b"v2")  # re-published under the same URI
    with pytest.raises(DGError, match="the reference pins"):
        _common.unpin(ref)
    assert _common.pin("org/hub-model") == "org/hub-model"  # not verifiable offline: passed as is
    a = _common.output_uri(root, "gate", {"x": 1, "y": [1, 2]})
    assert a == _common.output_uri(root, "gate", {"y": [1, 2], "x": 1}) != _common.output_uri(root, "gate", {"x": 2})


def test_log_metrics_keeps_finite_numbers_only():
    class M:
        def __init__(self):
            self.logged = {}

        def log_metric(self, k, v):
            self.logged[k] = v

    m = M()
    out = _common.log_metrics(m, {"a": 1, "b": {"c": 0.5, "d": "x", "e": float("nan")}, "f": True, "g": None})
    assert out == m.logged == {"a": 1.0, "b.c": 0.5}


def test_gate_component_passes_and_publishes_decision(env):
    root, tmp = env
    model = put(tmp / "m", store.join(root, "models/cal"), b"calibrated")
    task = gate(teacher_original=T0, teacher_calibrated=T1, students_original=GOOD[:1], students_calibrated=GOOD[1:],
                model=_common.pin(model), eta=-1.0, min_retention=0.95, max_transfer=0.5,
                min_transfer=1.1, aggregate="worst", min_seeds=1, store_root=root)  # fmt: skip
    assert task.outputs["Output"] is True
    decision = json.loads(Path(task.outputs["decision"].path).read_text())
    assert decision["passed"] is True and decision["direction"] == "undistillable"
    assert decision["uri"].startswith(store.join(root, "runs", "gate"))
    assert json.loads((store.fetch(decision["uri"]) / "gate.json").read_text())["model"]["uri"] == model
    assert "Release gate: PASSED" in Path(task.outputs["summary"].path).read_text()


def test_gate_component_fails_for_distillable_eta_with_falling_students(env):
    root, tmp = env
    model = put(tmp / "m", store.join(root, "models/cal"), b"calibrated")
    task = gate(teacher_original=T0, teacher_calibrated=T1, students_original=GOOD[:1], students_calibrated=GOOD[1:],
                model=_common.pin(model), eta=0.5, min_retention=0.95, max_transfer=0.5,
                min_transfer=1.1, aggregate="worst", min_seeds=1, store_root=root)  # fmt: skip
    assert task.outputs["Output"] is False
    assert "students do not learn better" in Path(task.outputs["summary"].path).read_text()


def test_gate_component_gates_eta_0_as_the_control(env):
    """eta = 0 is plain RFT: gated as a control (retention only), never as an undistillable release."""
    root, tmp = env
    model = put(tmp / "m", store.join(root, "models/cal"), b"calibrated")
    task = gate(teacher_original=T0, teacher_calibrated=T1, students_original=GOOD[:1], students_calibrated=GOOD[1:],
                model=_common.pin(model), eta=0.0, min_retention=0.95, max_transfer=0.5,
                min_transfer=1.1, aggregate="worst", min_seeds=1, store_root=root)  # fmt: skip
    decision = json.loads(Path(task.outputs["decision"].path).read_text())
    assert decision["direction"] == "control"
    assert "(control)" in Path(task.outputs["summary"].path).read_text()


@dsl.pipeline(name="gate-then-publish")
def gate_then_publish(model: str, release: str, store_root: str, students_calibrated: list) -> bool:
    g = gate(teacher_original=T0, teacher_calibrated=T1, students_original=GOOD[:1],
             students_calibrated=students_calibrated, model=model, eta=-1.0, min_retention=0.95,
             max_transfer=0.5, min_transfer=1.1, aggregate="worst", min_seeds=1, store_root=store_root)  # fmt: skip
    with dsl.If(g.outputs["Output"] == True):  # noqa: E712 - a KFP condition
        publish(model=model, decision=g.outputs["decision"], calibration="", release=release, releases_prefix="",
                hardened_prefix="", dest="", store_root=store_root)  # fmt: skip
    return g.outputs["Output"]


def test_publish_runs_only_behind_a_passed_gate(env):
    root, tmp = env
    release = _common.pin(put(tmp / "r", store.join(root, "releases/llm-a"), b"original"))
    model = _common.pin(put(tmp / "m", store.join(root, "runs/cal/model"), b"calibrated"))
    twin = store.join(root, "hardened/releases/llm-a")

    blocked = gate_then_publish(model=model, release=release, store_root=root, students_calibrated=GOOD[:1])
    assert blocked.output is False
    assert not store.is_published(twin)

    ok = gate_then_publish(model=model, release=release, store_root=root, students_calibrated=GOOD[1:])
    assert ok.output is True
    assert store.is_published(twin)
    card = json.loads((store.fetch(twin) / "calibration_card.json").read_text())
    assert card["release"]["uri"] == _common.uri_of(release) and card["gate"]["passed"] is True
    assert (store.fetch(twin) / "model.safetensors").read_bytes() == b"calibrated"


def test_list_releases_component_says_when_nothing_is_new(env):
    root, tmp = env
    rels, hard = store.join(root, "releases"), store.join(root, "hardened")
    empty = list_releases(releases_prefix=rels, hardened_prefix=hard, retry_rejected=False, store_root=root)
    assert empty.outputs["Output"] == []
    assert "Nothing new to harden" in Path(empty.outputs["summary"].path).read_text()
    a = put(tmp / "a", store.join(rels, "a"), b"a1")
    one = list_releases(releases_prefix=rels, hardened_prefix=hard, retry_rejected=False, store_root=root)
    (item,) = one.outputs["Output"]
    assert item["release"] == a and item["ref"] == _common.pin(a) and item["hardened"] == store.join(hard, "a")
    assert "1 of 1 release(s)" in Path(one.outputs["summary"].path).read_text()


def test_pin_models_component_pins_store_models(env):
    root, tmp = env
    t = put(tmp / "t", store.join(root, "models/t"), b"teacher")
    p = put(tmp / "p", store.join(root, "models/p"), b"proxy")
    task = pin_models(teacher=t, proxies=[p], student="", store_root=root)
    assert task.outputs["teacher"] == _common.pin(t)
    assert task.outputs["proxies"] == [_common.pin(p)]
    assert task.outputs["student"] == ""


def test_train_component_passes_through_at_zero_steps_and_trains_otherwise(env):
    from components.train.component import train
    from dg_core.cli import run_stage

    root, tmp = env
    ds = run_stage("prep", None, ["n=24", f"output={store.join(root, 'ds')}"])["uri"]
    t = put(tmp / "t", store.join(root, "models/t"), b"not a real model")
    same = train(model=t, dataset=ds, steps=0, batch_size=8, lr=1e-3, options={}, store_root=root)
    assert same.outputs["Output"] == _common.pin(t)  # nothing ran: the bytes above are no model at all
    boot = train(model="zoo:teacher", dataset=_common.pin(ds), steps=2, batch_size=8, lr=1e-3,
                 options={"warmup_steps": 0}, store_root=root)  # fmt: skip
    ref = boot.outputs["Output"]
    assert ref.startswith(store.join(root, "trained")) and _common.unpin(ref)
    assert json.loads(Path(boot.outputs["trained"].path).read_text())["bootstrapped"] is True


def test_placement_runs_here_on_one_node_and_as_a_trainjob_on_several():
    """calibrate and distill share this: processes here on one node, a TrainJob of nodes x GPUs on several."""
    here = _common.placement(4, "fsdp", 1, "torch-distributed", "")
    assert here == {"num_processes": 4, "strategy": "fsdp", "trainjob": None}
    job = _common.placement(8, "ddp", 2, "torch-distributed", "img:1")
    assert job["trainjob"] == {"num_nodes": 2, "gpus_per_node": 8, "runtime": "torch-distributed", "image": "img:1"}
