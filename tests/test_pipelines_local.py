"""End to end: `dguard run calibrate --local` and `dguard run reharden --local` (twice) on zoo models.

Small settings throughout; the teacher is bootstrapped once per module (prep + SFT on a tiny synthetic math set,
memorised, so teachers and students are scored on the train split where a few steps give non-zero accuracy).
These tests check the plumbing and the decisions, not the knob's effect (bench/knob.py measures that).
"""

from __future__ import annotations

import json
import time

import pytest

from dg_core import gate, store
from dg_core.cli import main as dguard
from dg_core.cli import run_stage
from pipelines import _params

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::RuntimeWarning")]  # kfp.local: image name

SMALL = [
    "prep_options={n: 64}",
    "eval_split=train",
    "eval_limit=16",
    "eval_options={k: 0}",
    "calibrate_options={preflight_accuracy: 0, min_retention: 0, eval_split: train, eval_n: 16, sampled_k: 1}",
    "calibrate_steps=2",
    "group_size=4",
    "attack_suite=[sft]",
    "attack_seeds=1",
    "attack_steps=20",
    "attack_limit=32",
    "attack_batch_size=16",
    "attack_max_new_tokens=48",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A zoo teacher that has memorised the training split the pipelines will prepare (same prep settings)."""
    root = tmp_path_factory.mktemp("teacher-store").as_uri()
    mp = pytest.MonkeyPatch()
    mp.setenv("DG_STORE_ROOT", root)
    mp.setenv("DG_THREADS", "1")
    try:
        ds = run_stage("prep", None, ["n=64", f"output={store.join(root, 'ds')}"])["uri"]
        model = run_stage(
            "train", None, ["model=zoo:teacher", f"dataset={ds}", "steps=100", "batch_size=32", "warmup_steps=10"]
        )["model"]
    finally:
        mp.undo()
    return model


def _run(tmp_path, capsys, pipeline: str, *args: str) -> str:
    rc = dguard(["run", pipeline, "--local", "--store", str(tmp_path / "store"), "--outputs", str(tmp_path / "kfp"),
                 *SMALL, *args])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0, out[-3000:]
    return out


def test_calibrate_pipeline_end_to_end(trained, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = (tmp_path / "store").as_uri()
    out = _run(
        tmp_path,
        capsys,
        "calibrate",
        f"teacher={trained}",
        "teacher_sft_steps=0",  # already trained
        "attack_students=[zoo:student-llama]",
        "min_retention=2.0",  # impossible: the gate must fail, and say why
    )
    assert "Release gate: FAILED (undistillable)" in out and "report: " in out

    (gate_uri,) = store.list_artifacts(store.join(root, "runs", "gate"))
    decision = gate.read_result(gate_uri)
    assert decision["passed"] is False
    assert any("teacher retention" in r and "< 2.0" in r for r in decision["reasons"])
    assert set(decision["attacks"]) == {"student-llama/sft"}
    (cal_model,) = [u for u in store.list_artifacts(store.join(root, "calibrate")) if u.endswith("/model")]
    assert decision["model"] == {"uri": cal_model, "sha256": store.content_sha(cal_model)}
    card = json.loads((store.fetch(cal_model.rsplit("/", 1)[0] + "/card") / "card.json").read_text())
    assert card["status"] == "passed" and card["settings"]["eta"] == _params.default("eta")  # the stage default

    (report_uri,) = store.list_artifacts(store.join(root, "reports"))
    html = (store.fetch(report_uri) / "report.html").read_text()
    assert "Distillability trade-off" in html and "student-llama/sft" in html
    assert "<img" in html  # plots are embedded

    assert not (tmp_path / "store" / "hardened").exists()  # a failed gate publishes nothing


def test_reharden_twice_second_run_is_a_no_op(trained, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = (tmp_path / "store").as_uri()
    release = store.join(root, "releases", "team", "llm-a")
    store.publish(store.fetch(trained), release, metadata={"kind": "release"})
    # a light touch on the release itself keeps the student far from accuracy 0 (where transfer is undefined and
    # the gate fails) on any CPU's floating point: 20 steps left it at 3/16 here, and a CI run failed this assertion
    lenient = [f"attack_students=[{release}]", "min_retention=0", "max_transfer=100", "attack_steps=3"]

    first = _run(tmp_path, capsys, "reharden", *lenient)
    assert "1 of 1 release(s)" in first and "Release gate: PASSED (undistillable)" in first
    twin = store.join(root, "hardened", "team", "llm-a")
    assert f"hardened model: {twin}" in first
    meta = store.read_manifest(twin)["metadata"]
    assert meta["kind"] == "hardened-model" and meta["release_sha256"] == store.content_sha(release)
    card = json.loads((store.fetch(twin) / "calibration_card.json").read_text())
    assert card["gate"]["passed"] is True and card["release"]["uri"] == release
    assert card["calibration"]["settings"]["eta"] == _params.default(
        "eta"
    )  # the calibration card travelled with the model

    before = {u: store.read_manifest(u)["created"] for u in store.list_artifacts(root)}
    t0 = time.monotonic()
    second = _run(tmp_path, capsys, "reharden", *lenient)
    assert "Nothing new to harden: all 1 release(s)" in second
    assert "Release gate" not in second and "hardened model" not in second
    assert {u: store.read_manifest(u)["created"] for u in store.list_artifacts(root)} == before
    assert time.monotonic() - t0 < 120
