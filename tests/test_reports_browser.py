"""The calibrate and diagnose reports as a person sees them: rendered by a real headless Chromium, with every
image decoded, every table headed and filled, no console error, and the verdict first."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from browser import problems, render
from traps_helpers import bigram_llama

from dg_core import report, store
from dg_core.config import from_dict
from dg_core.distill.suite import ATTACK_FILE
from dg_core.gate import GATE_FILE, attack_summary, decide


def _publish(root: Path, name: str, files: dict[str, object], **meta: object) -> str:
    uri = (root / name).as_uri()
    with tempfile.TemporaryDirectory() as tmp:
        for fname, body in files.items():
            (Path(tmp) / fname).write_text(json.dumps(body))
        store.publish(tmp, uri, metadata=meta)
    return uri


def _records() -> list[dict]:
    """Teachers and students of one calibration; gpt2/sft learned nothing from the original (transfer undefined)."""
    recs = [
        {"model": "teacher", "teacher": "original", "accuracy": 0.90, "n": 64},
        {"model": "teacher", "teacher": "calibrated", "accuracy": 0.88, "n": 64},
    ]
    for seed in (0, 1):
        recs += [
            {"model": "student", "teacher": "original", "student": "student-llama", "method": "sft", "seed": seed,
             "accuracy": 0.50 + 0.02 * seed},
            {"model": "student", "teacher": "calibrated", "student": "student-llama", "method": "sft", "seed": seed,
             "accuracy": 0.20},
            {"model": "student", "teacher": "original", "student": "student-gpt2", "method": "sft", "seed": seed,
             "accuracy": 0.0},
            {"model": "student", "teacher": "calibrated", "student": "student-gpt2", "method": "sft", "seed": seed,
             "accuracy": 0.0},
        ]  # fmt: skip
    return recs


def _build(tmp_path, with_defined: bool = True):
    root = tmp_path / "store"
    cal_model = _publish(root, "cal-model", {"config.json": {}}, eta=-1.0)
    recs = _records()
    floors = [{"student": "student-llama", "accuracy": 0.05}, {"student": "student-gpt2", "accuracy": 0.0}]
    undefined = [r for r in recs if r.get("student") != "student-llama"]  # no student learned from the original
    attacks = [
        _publish(root, f"attacks/{name}", {ATTACK_FILE: attack_summary(rs, floors, steps=300, calibrated=cal_model)})
        for name, rs in ((("a1", recs),) if with_defined else ()) + (("a2", undefined),)
    ]
    evals = [
        _publish(root, f"evals/{side}", {"eval.json": {
            "model": f"file:///very/long/store/path/{side}/7f43f983a553df63", "n": 64, "accuracy": acc,
            "greedy_accuracy": acc, "sampled_accuracy": acc - 0.05, "greedy_ci95": [acc - 0.05, acc + 0.05],
            "record": {"model": "teacher", "teacher": side}}})
        for side, acc in (("original", 0.90), ("calibrated", 0.88))
    ]  # fmt: skip
    verdict = decide(recs, direction="undistillable", max_transfer=0.5, min_retention=0.95)
    gate = _publish(root, "gate", {GATE_FILE: verdict})
    cfg = from_dict(report.Config, {"attacks": attacks, "evals": evals, "gate": gate})
    return report.build(cfg), verdict


def test_calibrate_report_renders_with_labels_verdict_and_tables(tmp_path):
    rep, verdict = _build(tmp_path)
    assert [r["worst_transfer"] is None for r in rep["json"]["tradeoff"]] == [False, True]
    found = render(rep["html"])
    assert problems(found) == []
    assert len(found["images"]) == rep["n_plots"] == 4  # two attack plots, the trade-off, the evaluations
    assert len(found["tables"]) >= 4 and all(t["rows"] > 0 and t["headers"] for t in found["tables"])
    text = found["text"]
    # The verdict and its reasons come first, as in the diagnose report.
    assert verdict["passed"] is False
    assert text.index("Release gate: FAILED") < text.index("Distillability trade-off")
    assert verdict["reasons"][0] in text
    # People's labels, not hashes or long file:// URIs.
    assert "original teacher" in text and "calibrated teacher (eta=-1.0)" in text
    assert "7f43f983a553df63" not in text and "file://" not in text
    headers = [h for t in found["tables"] for h in t["headers"]]
    assert "students of the calibrated teacher (eta=-1.0)" in headers
    assert "transfer (worst)" in headers


def test_tradeoff_plot_is_kept_when_every_transfer_is_undefined(tmp_path):
    """The original teacher's students all at 0: transfer is undefined; the plot stays, the point marked."""
    rep, _ = _build(tmp_path, with_defined=False)
    assert rep["json"]["tradeoff"][0]["worst_transfer"] is None
    found = render(rep["html"])
    assert problems(found) == []
    assert "trade-off plot" in [i["alt"] for i in found["images"]]


def test_diagnose_report_renders_with_headed_tables_and_labelled_kl_parts(tmp_path):
    from dg_core.data import get_task
    from dg_core.data.example import Example
    from dg_core.models.zoo import build_tokenizer
    from dg_core.traps import diagnose as stage

    tok = build_tokenizer("char")
    task = get_task("synthetic_math")
    ex = [Example(id=str(i), prompt=f"{i}+{4 - i}", reference="#4", answer="4") for i in range(4)]
    answer = {"\n": "#", "#": "4", "4": "</s>"}
    teacher = bigram_llama(tok, answer, peak=4.0, tail=0.0, noise=0.3)
    student = bigram_llama(tok, answer, peak=12.0, tail=-4.0)
    cfg = from_dict(stage.Config, {"teacher": "t", "student": "s", "dataset": "d", "n_examples": 4, "n_samples": 2,
                                   "max_new_tokens": 12, "batch_size": 8, "confidence_samples": 2, "n_bins": 2})  # fmt: skip
    rep = stage.diagnose(cfg, teacher, tok, student, tok, task, ex)
    rep |= {"teacher": {"ref": "planted-teacher"}, "student": {"ref": "planted-student"},
            "dataset": {"uri": "planted", "split": "test", "n": len(ex)}}  # what stage.run adds  # fmt: skip
    found = render(stage.render_html(rep, stage.plots(rep)))
    assert problems(found) == []
    assert len(found["images"]) == 3
    assert all(t["headers"] and t["rows"] > 0 for t in found["tables"])
    headers = [h for t in found["tables"] for h in t["headers"]]
    assert "forward KL: head" in headers and "measure" in headers
    assert "a bar can go below zero" in found["text"]
    assert found["text"].index(rep["summary"].split(";")[0]) < found["text"].index("Tail noise")


def test_the_checker_catches_what_it_claims():
    """A broken image, an empty table and a script error are each reported (the checks can fail)."""
    page = ("<!doctype html><html><head></head><body><table><tr><th>a</th></tr></table>"
            "<img alt='x' src='data:image/png;base64,AAAA'><script>console.error('boom')</script></body></html>")  # fmt: skip
    got = problems(render(page))
    assert any("image 'x'" in p for p in got) and any("no rows" in p for p in got)
    assert any("boom" in p for p in got)
