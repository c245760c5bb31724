"""`dguard` as users and images run it: a real subprocess, stdout JSON, one-line errors, exit codes."""

import json
import os
import subprocess
import sys

from dg_core.stages import STAGES


def dguard(*args, store_root, check=False):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DG_STORE_ROOT": store_root}
    return subprocess.run(
        [sys.executable, "-m", "dg_core.cli", *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_help_lists_every_stage(tmp_path):
    out = dguard("--help", store_root=f"file://{tmp_path}").stdout
    for name in STAGES:
        assert name in out
    assert "calibrate" in out and "submit" in out


def test_stage_help_documents_fields(tmp_path):
    r = dguard("zoo", "--help", store_root=f"file://{tmp_path}")
    assert r.returncode == 0
    assert "names" in r.stdout and "Zoo members to build" in r.stdout


def test_zoo_stage_builds_and_reports(tmp_path):
    r = dguard("zoo", "names=[proxy,student-gpt2]", store_root=f"file://{tmp_path}")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)["models"]
    assert set(summary) == {"proxy", "student-gpt2"}
    assert summary["proxy"]["tokenizer"] == "bpe" and summary["student-gpt2"]["parameters"] > 100_000
    assert '"names": ["proxy", "student-gpt2"]' in r.stderr  # the resolved config is logged


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    for args, words in (
        (("zoo", "names=[nope]"), "names"),
        (("zoo", "colour=red"), "unknown config field 'colour'"),
        (("zoo", "--config", str(tmp_path / "missing.yaml")), "not found"),
        (("frobnicate",), "unknown stage 'frobnicate'"),
    ):
        r = dguard(*args, store_root=f"file://{tmp_path}")
        assert r.returncode == 2, (args, r.stderr)
        err = [line for line in r.stderr.splitlines() if "error:" in line]
        assert len(err) == 1 and words in err[0], r.stderr
        assert "Traceback" not in r.stderr


def test_secrets_are_redacted_but_token_counts_are_not():
    from dg_core.cli import _redact

    out = _redact(
        {
            "max_new_tokens": 64,
            "auth_token": "abc",
            "s3": {"secret_key": "xyz", "access_key": "k"},
            "api_key": "q",
            "tokenizer": "char",
        }
    )
    assert out == {
        "max_new_tokens": 64,
        "auth_token": "***",
        "s3": {"secret_key": "***", "access_key": "***"},
        "api_key": "***",
        "tokenizer": "char",
    }


def test_non_finite_numbers_exit_2_with_one_line(capsys):
    from dg_core.cli import main

    for args, field in (
        (["calibrate", "eta=nan"], "'eta'"),
        (["calibrate", "eta=inf"], "'eta'"),
        (["calibrate", "eta=-inf"], "'eta'"),
        (["calibrate", "lr=inf", "checkpoint_every=1"], "'lr'"),
        (["calibrate", "temperature=inf"], "'temperature'"),
        (["distill", "temperature=.inf"], "'temperature'"),
        (["train", "lr=.nan"], "'lr'"),
        (["prep", "splits={train: .nan, test: 1.0}"], "'splits.train'"),
    ):
        assert main(args) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert "error:" in err[-1] and field in err[-1] and "finite number" in err[-1], (args, err)
        assert not any("Traceback" in line for line in err)
