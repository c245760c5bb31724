"""The `diagnose` stage: planted traps through the whole measurement, and `dguard diagnose` end to end."""

from __future__ import annotations

import base64
import json
import re

import pytest
from traps_helpers import bigram_llama

from dg_core import store
from dg_core.cli import main
from dg_core.config import from_dict
from dg_core.data import get_task
from dg_core.data.artifact import write_manifest
from dg_core.data.example import Example, write_jsonl
from dg_core.models.zoo import build_tokenizer
from dg_core.traps import diagnose as stage

ANSWER = {"\n": "#", "#": "4", "4": "</s>"}


def _cfg(**kw):
    base = dict(
        teacher="planted-teacher",
        student="planted-student",
        dataset="planted",
        n_examples=4,
        n_samples=2,
        max_new_tokens=12,
        batch_size=8,
        confidence_samples=2,
        n_bins=2,
    )
    return from_dict(stage.Config, {**base, **kw})


@pytest.fixture(scope="module")
def planted():
    tok = build_tokenizer("char")
    task = get_task("synthetic_math")
    examples = [Example(id=str(i), prompt=f"{i}+{4 - i}", reference="#4", answer="4") for i in range(4)]
    return tok, task, examples


def test_clean_pair_has_no_traps(planted):
    tok, task, ex = planted
    model = bigram_llama(tok, ANSWER, peak=12.0, tail=-4.0)
    report = stage.diagnose(_cfg(), model, tok, model, tok, task, ex)
    assert report["flags"] == [] and report["distillability"] == "high", report["summary"]
    assert report["vocab"]["identical"] is True
    gap = report["traps"]["gap"]
    assert gap["teacher_accuracy"] == gap["student_accuracy"] == 1.0
    assert gap["seq_loglik_gap_per_char"] == pytest.approx(0.0, abs=1e-5)
    assert report["symptoms"]["overconfidence"]["ece"] == pytest.approx(0.0, abs=0.01)
    assert report["traps"]["wrong_trace"]["student"]["n_pairs"] == 4
    json.dumps(report, allow_nan=False)  # strictly valid JSON


def test_planted_tail_noise_teacher_and_looping_student_are_flagged(planted):
    tok, task, ex = planted
    noisy_teacher = bigram_llama(tok, ANSWER, peak=4.0, tail=0.0, noise=0.3)
    student = bigram_llama(tok, ANSWER, peak=12.0, tail=-4.0)
    report = stage.diagnose(_cfg(), noisy_teacher, tok, student, tok, task, ex)
    assert "tail_noise" in report["flags"] and "degradation" not in report["flags"], report["summary"]
    assert report["traps"]["tail_noise"]["teacher_tail_mass"]["5"] > 0.5

    teacher = bigram_llama(tok, ANSWER, peak=12.0, tail=-4.0)
    looping = bigram_llama(tok, {"\n": "#", "#": "1", "1": "#"}, peak=12.0, tail=-4.0)
    report = stage.diagnose(_cfg(), teacher, tok, looping, tok, task, ex)
    assert "degradation" in report["flags"] and "tail_noise" not in report["flags"], report["summary"]
    deg = report["symptoms"]["degradation"]["greedy"]
    assert deg["loop_rate"] == 1.0 and deg["truncation_rate"] == 1.0
    assert "gap" in report["flags"]  # the looping student never answers: accuracy gap 1.0
    assert report["distillability"] in ("medium", "low") and report["summary"].startswith("distillability")


@pytest.fixture()
def dataset(tmp_path):
    d = tmp_path / "ds"
    d.mkdir()
    task = get_task("synthetic_math")
    ex = task.generate(6, 0)
    write_jsonl(d / "test.jsonl", ex)
    write_manifest(d, {"task": task.spec(), "splits": {"test": {"file": "test.jsonl", "n": len(ex)}}})
    return d


def test_cli_end_to_end_on_zoo_models_with_different_tokenizers(dataset, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DG_STORE_ROOT", str(tmp_path / "store"))
    monkeypatch.setenv("DG_METRICS_DIR", str(tmp_path / "metrics"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out_uri = (tmp_path / "store" / "diag").as_uri()
    rc = main(
        [
            "diagnose",
            "teacher=zoo:teacher",
            "student=zoo:student-gpt2",
            f"dataset={dataset}",
            "n_examples=3",
            "n_samples=2",
            "max_new_tokens=16",
            "batch_size=8",
            "confidence_samples=2",
            "ks=[1,5,20]",
            "thresholds.tail_mass=0.99",
            f"output={out_uri}",
        ]
    )
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["report"] == out_uri and summary["summary"].startswith("distillability")
    d = store.fetch(out_uri)
    report = json.loads((d / stage.REPORT_JSON).read_text())
    assert report["schema"] == stage.SCHEMA and report["summary"] == summary["summary"]
    assert (d / stage.SUMMARY_TXT).read_text().strip() == summary["summary"]
    assert report["vocab"]["identical"] is False and report["vocab"]["n_shared"] > 10
    assert report["teacher"]["vocab"] != report["student"]["vocab"]
    assert report["config"]["thresholds"]["tail_mass"] == 0.99
    tail = report["traps"]["tail_noise"]
    assert [r["k"] for r in tail["forward"]["per_k"]] == [1, 5, 20, "full"]
    assert tail["forward"]["per_k"][-1]["tail_share"] == pytest.approx(0.0, abs=1e-4)
    assert tail["n_positions"] > 0 and report["traps"]["off_policy"]["student_prefixes"]["n_positions"] > 0
    assert report["traps"]["gap"]["n_aligned_spans"] > 0
    assert report["traps"]["wrong_trace"]["student"]["n_pairs"] == 3
    assert report["symptoms"]["self_correction"]["n"] == 3  # decomposed references have intermediate steps
    assert set(report["flags"]) <= set(report["traps"]) | set(report["symptoms"])
    page = (d / stage.REPORT_HTML).read_text()
    images = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)
    assert len(images) == 3 and all(base64.b64decode(b)[:4] == b"\x89PNG" for b in images)
    assert summary["summary"].split(";")[0] in page
    prom = next((tmp_path / "metrics").glob("diagnose-*.prom")).read_text()
    assert "dguard_diag_flags{" in prom and "dguard_stage_success" in prom


def test_bad_input_fails_in_one_line_and_publishes_nothing(dataset, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DG_STORE_ROOT", str(tmp_path / "store"))
    assert main(["diagnose", "teacher=zoo:teacher", f"dataset={dataset}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "'student' is required" in err
    assert main(["diagnose", "teacher=zoo:teacher", "student=zoo:teacher", f"dataset={dataset}", "split=train"]) == 2
    assert "no split 'train'" in capsys.readouterr().err
    assert (
        main(["diagnose", "teacher=zoo:teacher", "student=zoo:teacher", f"dataset={dataset}", "confidence=vibes"]) == 2
    )
    assert "confidence" in capsys.readouterr().err
    assert store.list_artifacts(store.join(store.default_root(), "diagnose")) == []
    assert main(["diagnose", "--help"]) == 0
    assert "thresholds.tail_mass" in capsys.readouterr().out
