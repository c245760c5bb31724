"""Progress: a log line every N steps (with the caller's figures, elapsed time and an ETA) when not in a terminal."""

from __future__ import annotations

import logging

from dg_core.progress import Progress


def test_log_lines_every_n_steps_and_at_the_end(caplog):
    log = logging.getLogger("test.progress")
    with caplog.at_level(logging.INFO, logger="test.progress"):
        with Progress(7, "calibrate eta=-1", log_every=3, logger=log, tty=False) as p:
            for i in range(7):
                p.update(1, kl=0.5, acc=i / 10)
    lines = [r.getMessage() for r in caplog.records]
    assert [ln.split(" kl=")[0] for ln in lines] == [f"calibrate eta=-1 step {n}/7" for n in (3, 6, 7)]
    assert "acc=0.6" in lines[-1] and lines[-1].endswith("ETA 0 s") and "ETA" in lines[0]


def test_disabled_is_silent_and_a_terminal_gets_a_bar(caplog):
    log = logging.getLogger("test.progress")
    with caplog.at_level(logging.INFO, logger="test.progress"):
        Progress(3, "x", enabled=False, log_every=1, logger=log, tty=False).update(3)
        bar = Progress(3, "x", log_every=1, logger=log, tty=True)
        bar.update(3)
        bar.close()
    assert caplog.records == [] and bar.bar is not None


def test_training_logs_loss_tokens_per_second_and_eta(tmp_path, monkeypatch, caplog):
    """Without a terminal (a pipeline pod) training says where it is: step, loss, tokens/s, ETA."""
    import torch

    from dg_core.config import from_dict
    from dg_core.data import get_task
    from dg_core.data.artifact import write_manifest
    from dg_core.data.example import write_jsonl
    from dg_core.distill import train_stage

    torch.set_num_threads(1)
    monkeypatch.setenv("DG_STORE_ROOT", (tmp_path / "store").as_uri())
    monkeypatch.setenv("DG_CACHE_DIR", str(tmp_path / "cache"))
    task = get_task("synthetic_math", a_digits=1, b_digits=1, terms=0)
    write_jsonl(tmp_path / "train.jsonl", task.generate(8, seed=0))
    write_manifest(tmp_path, {"task": task.spec(), "splits": {"train": {"file": "train.jsonl"}}})
    cfg = {"model": "zoo:student-llama", "dataset": str(tmp_path), "steps": 3, "batch_size": 4}
    with caplog.at_level(logging.INFO, logger="dg_core.distill.trainer"):
        train_stage.run(from_dict(train_stage.Config, cfg))
    lines = [r.getMessage() for r in caplog.records if " step 3/3 " in r.getMessage()]
    assert len(lines) == 1 and "loss=" in lines[0] and "tok_s=" in lines[0] and "ETA 0 s" in lines[0]
