"""dg_core.metrics against a real prometheus-pushgateway on loopback, and as a textfile."""

from __future__ import annotations

import logging
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dg_core.errors import DGError
from dg_core.metrics import StageMetrics, default_attempt, groups, prune


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels but instance): value} of a text exposition; bucket bounds as floats."""
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            labels = tuple(
                sorted((k, str(float(v)) if k == "le" else v) for k, v in s.labels.items() if k != "instance")
            )
            out[(s.name, labels)] = s.value
    return out


def _scrape(pushgateway) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(pushgateway.url + "/metrics", timeout=10) as r:
        return _samples(r.read().decode())


def _lbl(run: str, stage: str, job: bool = True, task: str = "", attempt: str = "", **extra: str) -> tuple:
    """Labels of a series; task and attempt default to a local run's (the stage, this host and process)."""
    d = {"run": run, "stage": stage, "task": task or stage, "attempt": attempt or default_attempt(), **extra}
    if job:
        d["job"] = "dguard"
    return tuple(sorted(d.items()))


def test_push_to_real_pushgateway_and_read_back(pushgateway, clean_env):
    clean_env.setenv("DG_PUSHGATEWAY_URL", pushgateway.url)
    run = "run-push-1"
    m = StageMetrics("calibrate", run)
    m.inc("steps")
    m.inc("steps", 2)
    m.set("reward_mean", 0.25)
    for v in (0.05, 0.2, 3.0):
        m.observe("step_seconds", v, buckets=(0.1, 1.0, 10.0))
    assert m.flush() is True

    got = _scrape(pushgateway)
    lab = _lbl(run, "calibrate")
    assert got[("dguard_steps_total", lab)] == 3.0
    assert got[("dguard_reward_mean", lab)] == 0.25
    assert got[("dguard_step_seconds_count", lab)] == 3.0
    assert got[("dguard_step_seconds_sum", lab)] == pytest.approx(3.25)
    assert got[("dguard_step_seconds_bucket", _lbl(run, "calibrate", le="0.1"))] == 1.0
    assert got[("dguard_step_seconds_bucket", _lbl(run, "calibrate", le="1.0"))] == 2.0
    assert got[("push_time_seconds", lab)] > 0  # the gateway accepted a push for exactly this group

    # A second flush replaces the group's values; another stage of the same run is its own group.
    m.inc("steps")
    m.set("reward_mean", 0.5)
    assert m.flush()
    with StageMetrics("evaluate", run) as e:
        e.set("accuracy", 0.9)
    got = _scrape(pushgateway)
    assert got[("dguard_steps_total", lab)] == 4.0
    assert got[("dguard_reward_mean", lab)] == 0.5
    assert got[("dguard_accuracy", _lbl(run, "evaluate"))] == 0.9
    assert got[("dguard_stage_success", _lbl(run, "evaluate"))] == 1.0
    assert got[("dguard_stage_duration_seconds", _lbl(run, "evaluate"))] >= 0.0


def test_failed_stage_is_recorded(pushgateway, clean_env):
    clean_env.setenv("DG_PUSHGATEWAY_URL", pushgateway.url)
    with pytest.raises(RuntimeError), StageMetrics("distill", "run-fail-1") as m:
        m.inc("steps")
        raise RuntimeError("boom")
    got = _scrape(pushgateway)
    assert got[("dguard_stage_success", _lbl("run-fail-1", "distill"))] == 0.0
    assert got[("dguard_steps_total", _lbl("run-fail-1", "distill"))] == 1.0


def test_textfile_when_no_pushgateway(clean_env, tmp_path):
    clean_env.setenv("DG_METRICS_DIR", str(tmp_path / "prom"))
    clean_env.setenv("DG_RUN_ID", "kfp/run 7")
    m = StageMetrics("prep")
    assert m.run_id == "kfp/run 7"
    m.inc("examples", 120)
    m.set("dedup_ratio", 0.125)
    with m.timer("load_seconds"):
        pass
    assert m.flush()
    path = tmp_path / "prom" / f"prep-kfp_run_7-{default_attempt()}.prom"
    assert m.textfile == path
    got = _samples(path.read_text())
    lab = _lbl("kfp/run 7", "prep", job=False)
    assert got[("dguard_examples_total", lab)] == 120.0
    assert got[("dguard_dedup_ratio", lab)] == 0.125
    assert got[("dguard_load_seconds_count", lab)] == 1.0
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # written atomically, no temp left


def test_push_failure_warns_and_falls_back_to_textfile(clean_env, tmp_path, caplog):
    from servers import free_port

    url = f"http://user:pa55word@127.0.0.1:{free_port()}"
    m = StageMetrics("train", "r1", pushgateway_url=url, timeout_s=2)
    m.inc("steps")
    with caplog.at_level(logging.WARNING, logger="dg_core.metrics"):
        assert m.flush() is False  # nowhere to go, but no exception
    assert "metrics: push to http://127.0.0.1:" in caplog.text and "pa55word" not in caplog.text

    m.metrics_dir = tmp_path
    assert m.flush() is True
    assert _samples((tmp_path / f"train-r1-{default_attempt()}.prom").read_text())[
        ("dguard_steps_total", _lbl("r1", "train", job=False))
    ]


def test_nothing_configured_is_a_quiet_no_op(clean_env, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    m = StageMetrics("report", "r2")
    m.set("x", 1)
    assert m.flush() is False and m.textfile is None
    assert list(tmp_path.iterdir()) == []


def test_misuse_is_a_clear_error(clean_env):
    m = StageMetrics("calibrate", "r3")
    m.inc("steps")
    with pytest.raises(DGError, match="'steps' is a counter, cannot use it as a gauge"):
        m.set("steps", 1)
    with pytest.raises(DGError, match="name 'bad-name' is not valid"):
        m.inc("bad-name")
    with pytest.raises(DGError, match="cannot decrease"):
        m.inc("steps", -1)
    with pytest.raises(DGError, match="stage name '' is empty"):
        StageMetrics("")


def test_kfp_identity_groups_parallel_pods_apart(pushgateway, clean_env):
    """Two pods of one task (a ParallelFor, or a retry) push in the same second: two groups, both kept, each
    labelled with the KFP run, task and attempt the pipeline put in their environment."""
    clean_env.setenv("DG_PUSHGATEWAY_URL", pushgateway.url)
    clean_env.setenv("DG_RUN_ID", "3f1c9a2e-run")
    clean_env.setenv("DG_TASK", "distill-2")
    for pod, acc in (("dguard-calibrate-abc-system-container-impl-111", 0.25),
                     ("dguard-calibrate-abc-system-container-impl-222", 0.75)):  # fmt: skip
        clean_env.setenv("DG_ATTEMPT", pod)
        m = StageMetrics("distill")
        m.set("accuracy", acc)
        assert m.flush()
    got = _scrape(pushgateway)
    lab = {"task": "distill-2", "run": "3f1c9a2e-run", "stage": "distill"}
    assert got[("dguard_accuracy", _lbl(attempt="dguard-calibrate-abc-system-container-impl-111", **lab))] == 0.25
    assert got[("dguard_accuracy", _lbl(attempt="dguard-calibrate-abc-system-container-impl-222", **lab))] == 0.75
    mine = [g for g in groups(pushgateway.url) if g["labels"].get("run") == "3f1c9a2e-run"]
    assert sorted(g["labels"]["attempt"] for g in mine) == ["dguard-calibrate-abc-system-container-impl-111",
                                                              "dguard-calibrate-abc-system-container-impl-222"]  # fmt: skip


def test_groups_past_their_ttl_are_deleted_when_a_stage_closes(pushgateway, clean_env):
    import time

    clean_env.setenv("DG_PUSHGATEWAY_URL", pushgateway.url)
    old = StageMetrics("prep", "run-ttl-old")
    old.set("x", 1)
    assert old.flush()
    time.sleep(1.5)
    clean_env.setenv("DG_PUSHGATEWAY_TTL", "1")
    with StageMetrics("prep", "run-ttl-new") as new:
        new.set("x", 2)
    runs = {g["labels"]["run"] for g in groups(pushgateway.url)}
    assert "run-ttl-new" in runs and "run-ttl-old" not in runs
    assert ("dguard_x", _lbl("run-ttl-old", "prep")) not in _scrape(pushgateway)
    # TTL 0 keeps everything; an unreachable gateway is a warning, not an error.
    assert prune(pushgateway.url, 0, now=time.time() + 10**6) == []
    from servers import free_port

    assert prune(f"http://127.0.0.1:{free_port()}", 1, timeout_s=1) == []
