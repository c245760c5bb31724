"""`dguard` as users and images run it: a real subprocess, stdout JSON, one-line errors, exit codes."""

import json
import os
import re
import subprocess
import sys

import pytest

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
    from dg_core.errors import redact

    out = redact(
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


# ---------------------------------------------------------------------------------------------- issue 11 item 9


@pytest.fixture(scope="module")
def proxy_dir(tmp_path_factory):
    """A saved zoo model folder (the proxy: the smallest) to break in different ways."""
    from dg_core import store
    from dg_core.models.resolve import resolve_model_dir

    root = tmp_path_factory.mktemp("store")
    mp = pytest.MonkeyPatch()
    mp.setenv("DG_STORE_ROOT", root.as_uri())
    d = resolve_model_dir("zoo:proxy")
    assert store.MANIFEST in {p.name for p in d.iterdir()}
    yield d
    mp.undo()


def _broken(proxy_dir, tmp_path, how):
    import shutil

    d = tmp_path / how
    shutil.copytree(proxy_dir, d)
    (d / "MANIFEST.json").unlink()
    cfg = json.loads((d / "config.json").read_text())
    if how == "truncated":
        w = d / "model.safetensors"
        w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    elif how == "header":
        w = d / "model.safetensors"
        w.write_bytes(w.read_bytes()[:100])
    elif how == "no-tokenizer":
        for p in d.glob("tokenizer*"):
            p.unlink()
    elif how == "garbage-config":
        (d / "config.json").write_text("garbage{")
    elif how == "empty-config":
        (d / "config.json").write_text("")
    elif how == "unknown-type":
        (d / "config.json").write_text(json.dumps({**cfg, "model_type": "frobnicator"}))
    elif how == "custom-code":
        (d / "config.json").write_text(json.dumps({**cfg, "auto_map": {"AutoModelForCausalLM": "evil.Model"}}))
    return d


@pytest.mark.parametrize(
    "how, words",
    [
        ("truncated", "truncated"),
        ("header", "not a readable safetensors file"),
        ("no-tokenizer", "has no tokenizer"),
        ("garbage-config", "config.json is not valid JSON"),
        ("empty-config", "config.json is empty"),
        ("unknown-type", "model_type 'frobnicator' is not one transformers knows"),
        ("custom-code", "names custom code (auto_map)"),
    ],
)
def test_a_broken_model_folder_is_one_line(proxy_dir, tmp_path, how, words):
    from dg_core.errors import DGError
    from dg_core.models import load_model

    with pytest.raises(DGError, match=re.escape(words)):
        load_model(str(_broken(proxy_dir, tmp_path, how)), device="cpu")


def test_evaluate_cli_on_a_broken_model_exits_2(proxy_dir, tmp_path, capsys):
    from dg_core.cli import main

    d = _broken(proxy_dir, tmp_path, "truncated")
    assert main(["evaluate", f"model={d}", "dataset=file:///nonexistent-dataset", "k=0"]) in (2,)
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("dguard evaluate: error: ") and not any("Traceback" in x for x in err)


@pytest.mark.parametrize(
    "args, env, words",
    [
        (["evaluate", "model=zoo:proxy", "dataset=file:///x", "device=gpu0"], {}, "device 'gpu0': expected auto, cpu"),
        (
            ["evaluate", "model=zoo:proxy", "dataset=file:///x", "device=cuda"],
            {},
            "device 'cuda': CUDA is not available",
        ),
        (["zoo", "names=[proxy]"], {"DG_THREADS": "abc"}, "DG_THREADS='abc': expected a whole number"),
        (["zoo", "names=[proxy]"], {"DG_LOG_LEVEL": "LOUD"}, "DG_LOG_LEVEL='LOUD': expected one of DEBUG, INFO"),
    ],
)
def test_bad_device_and_environment_are_one_line(args, env, words, tmp_path, monkeypatch, capsys):
    import torch

    from dg_core.cli import main

    if "cuda" in " ".join(args) and torch.cuda.is_available():
        pytest.skip("this machine has CUDA: device=cuda is valid here")
    monkeypatch.setenv("DG_STORE_ROOT", tmp_path.as_uri())
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len([x for x in err if "error:" in x]) == 1 and words in err[-1], err


def test_non_utf8_yaml_config_is_one_line(tmp_path, capsys):
    from dg_core.cli import main

    f = tmp_path / "c.yaml"
    f.write_bytes(b"eta: 0.5\nname: \xff\xfe\n")
    assert main(["prep", "--config", str(f)]) == 2
    assert "not UTF-8 text (byte 0xff" in capsys.readouterr().err.strip().splitlines()[-1]


def test_compile_out_an_existing_file_is_one_line(tmp_path, capsys):
    from dg_core.cli import main

    f = tmp_path / "existing.yaml"
    f.write_text("x")
    assert main(["compile", "calibrate", "--out", str(f)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dguard compile: error: ") and str(f) in err[0]
    assert f.read_text() == "x"


def test_unexpected_exception_is_one_line_and_exit_1_traceback_only_with_v(monkeypatch, capsys):
    from dg_core import gate
    from dg_core.cli import main

    def boom(cfg):
        raise ZeroDivisionError("division by zero\nsecond line")

    monkeypatch.setattr(gate, "run", boom)
    assert main(["gate"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        "dguard gate: internal error: ZeroDivisionError: division by zero second line (run with -v for the traceback)"
    )
    assert not any("Traceback" in x for x in err)
    assert main(["-v", "gate"]) == 1
    assert "Traceback (most recent call last)" in capsys.readouterr().err


def test_a_closed_stdout_ends_quietly(tmp_path):
    """`dguard calibrate --help | head`: the reader leaves early; no BrokenPipeError traceback."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DG_STORE_ROOT": tmp_path.as_uri()}
    r = subprocess.run(
        f"{sys.executable} -m dg_core.cli calibrate --help | true", shell=True, capture_output=True, text=True, env=env
    )
    assert r.returncode == 0 and r.stderr == "", r.stderr
    p = subprocess.Popen(
        [sys.executable, "-m", "dg_core.cli", "calibrate", "--help"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    p.stdout.close()  # closed before dguard writes a byte
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 141 and err == "", err
