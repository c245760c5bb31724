"""Multi-node tasks as Kubeflow Trainer TrainJobs: end to end through the kubeflow SDK's local process backend,
and the manifest its KubernetesBackend would send validated against the TrainJob schema of the Trainer API
models (kubeflow_trainer_api, installed with the SDK)."""

import base64
import hashlib
import os
import shutil
import sys
import zipfile
from pathlib import Path

import jsonschema
import pytest

from components import _common
from dg_core import store
from dg_core.cli import run_stage as cli_run_stage
from dg_core.errors import DGError
from dg_core.launch import LaunchError, trainjob

ROOT = Path(__file__).resolve().parents[1]


def crd_schema() -> dict:
    """The TrainJob schema as the Kubeflow Trainer's API models (``kubeflow_trainer_api``, generated from the
    Trainer's OpenAPI spec and installed with the SDK) define it."""
    from kubeflow_trainer_api.models import TrainerV1alpha1TrainJob

    schema = TrainerV1alpha1TrainJob.model_json_schema()
    # The generated models type a resource Quantity as an object; on the wire (and in the CRD) it is
    # int-or-string ("8", 8, "16Gi"), which is what the API server checks.
    schema["$defs"]["IoK8sApimachineryPkgApiResourceQuantity"] = {"anyOf": [{"type": "string"}, {"type": "number"}]}
    return schema


def _strict(schema: dict) -> dict:
    """The CRD schema as the API server applies it: unknown fields are pruned there, refused here."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items() if not k.startswith("x-kubernetes")}
        if out.get("type") == "object" and "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


def test_manifest_for_the_cluster_is_a_valid_trainjob():
    params = {"teacher": "s3://models/t", "proxies": ["s3://models/q"], "dataset": "s3://data/d", "steps": 3}
    m = trainjob.manifest("calibrate", params, num_nodes=4, gpus_per_node=8, image="ghcr.io/x/dguard:1-cuda",
                          env={"DG_STORE_ROOT": "s3://dg", "AWS_REGION": "eu-west-1"})  # fmt: skip
    jsonschema.Draft202012Validator(_strict(crd_schema())).validate(m)
    assert m["apiVersion"] == "trainer.kubeflow.org/v1alpha1" and m["kind"] == "TrainJob"
    spec = m["spec"]
    assert spec["runtimeRef"] == {"name": "torch-distributed", "kind": "ClusterTrainingRuntime",
                                  "apiGroup": "trainer.kubeflow.org"} or spec["runtimeRef"]["name"] == "torch-distributed"  # fmt: skip
    t = spec["trainer"]
    assert t["numNodes"] == 4 and t["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == 8
    assert t["image"] == "ghcr.io/x/dguard:1-cuda"
    assert {e["name"] for e in t["env"]} == {"DG_STORE_ROOT", "AWS_REGION"}
    script = " ".join(t["command"])
    assert "torchrun" in script and "dguard_stage_node" in script and "'stage': 'calibrate'" in script


def test_the_crd_check_is_live():
    """The same manifest with a misspelt field, or a bad numNodes type, is refused."""
    m = trainjob.manifest("train", {"model": "s3://m", "dataset": "s3://d"}, num_nodes=2, gpus_per_node=1)
    m["spec"]["trainer"]["numNode"] = 2
    with pytest.raises(jsonschema.ValidationError, match="numNode"):
        jsonschema.Draft202012Validator(_strict(crd_schema())).validate(m)
    m = trainjob.manifest("train", {"model": "s3://m", "dataset": "s3://d"}, num_nodes=2, gpus_per_node=1)
    m["spec"]["trainer"]["numNodes"] = "two"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(_strict(crd_schema())).validate(m)


def test_no_credentials_are_forwarded_into_a_trainjob(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIA")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://minio:9000")
    env = trainjob.forward_env()
    assert env.get("AWS_ENDPOINT_URL") == "http://minio:9000"
    assert not {"AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID"} & set(env)
    m = trainjob.manifest("train", {"model": "s3://m", "dataset": "s3://d"}, num_nodes=2, gpus_per_node=1, env=env)
    assert "s3cr3t" not in str(m)


def test_bad_input_fails_before_a_trainjob_is_created():
    with pytest.raises(DGError, match="steps"):
        trainjob.manifest("train", {"model": "s3://m", "dataset": "s3://d", "steps": "x"}, num_nodes=2, gpus_per_node=1)
    with pytest.raises(DGError, match="num_nodes=0"):
        trainjob.manifest("train", {"model": "s3://m", "dataset": "s3://d"}, num_nodes=0, gpus_per_node=1)


# ------------------------------------------------------------------------------ the SDK's local backend


def _torchrun_wheel(d: Path) -> Path:
    """A wheel whose only content is a `torchrun` console script (torch.distributed.run:main).

    The SDK's local backend runs each TrainJob in a fresh venv and calls <venv>/bin/torchrun, which a runtime
    image has; the venv reaches this environment's torch through PYTHONPATH, and this wheel gives it the script
    (installed offline from the file, nothing downloaded).
    """
    name, ver = "dguard_torchrun_entry", "1.0"
    files = {
        f"{name}-{ver}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {ver}\n",
        f"{name}-{ver}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        f"{name}-{ver}.dist-info/entry_points.txt": "[console_scripts]\ntorchrun = torch.distributed.run:main\n",
    }
    rec = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        rec.append(f"{path},sha256={digest},{len(text.encode())}")
    rec.append(f"{name}-{ver}.dist-info/RECORD,,")
    whl = d / f"{name}-{ver}-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as z:
        for path, text in files.items():
            z.writestr(path, text)
        z.writestr(f"{name}-{ver}.dist-info/RECORD", "\n".join(rec) + "\n")
    return whl


@pytest.fixture()
def local(store_root, tmp_path):
    whl = _torchrun_wheel(tmp_path)
    site = [p for p in sys.path if p.endswith("site-packages")]
    # The venv sees this environment's pip through PYTHONPATH, so ensurepip puts none in it: `pip` must run as
    # the venv's `python -m pip` (installing into the venv, never elsewhere; no index is ever asked).
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "pip").write_text('#!/bin/sh\nexec python -m pip "$@"\n')
    (tools / "pip").chmod(0o755)
    env = {
        "PATH": os.pathsep.join([str(tools), os.environ.get("PATH", "/usr/bin:/bin")]),
        "PIP_REQUIRE_VIRTUALENV": "1",
        "PIP_NO_INDEX": "1",
        "HOME": str(tmp_path),
        "PYTHONPATH": os.pathsep.join([str(ROOT), *site]),
        "DG_STORE_ROOT": store_root,
        "DG_CACHE_DIR": str(tmp_path / "cache"),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }
    assert shutil.which("python") or shutil.which("python3")
    ds = cli_run_stage("prep", None, ["n=16", f"output={store.join(store_root, 'ds')}"])["uri"]
    cwd = os.getcwd()
    yield {"env": env, "packages": [f"dguard_torchrun_entry @ {whl.as_uri()}"], "dataset": ds, "root": store_root}
    os.chdir(cwd)  # the local backend runs each job from inside its venv folder


@pytest.mark.slow
def test_a_stage_runs_as_a_trainjob_on_the_sdks_local_backend(local, capsys):
    out = store.join(local["root"], "trained/tj")
    params = {"model": "zoo:teacher", "dataset": local["dataset"], "steps": 1, "batch_size": 4, "warmup_steps": 0,
              "output": out}  # fmt: skip
    tj = {"num_nodes": 1, "gpus_per_node": 0, "runtime": "torch-distributed", "env": local["env"],
          "packages": local["packages"], "client": trainjob.local_client(), "timeout": 600}  # fmt: skip
    summary = _common.run_stage("train", params, {}, trainjob=tj)  # what the calibrate/distill components call
    assert summary["model"] == out and store.is_published(out)  # rank 0 published; the task read it back
    assert summary["trainjob"]["runtime"] == "torch-distributed" and summary["trainjob"]["name"]
    assert "DGUARD_SUMMARY" in capsys.readouterr().out  # the TrainJob's log was streamed into the task's


@pytest.mark.slow
def test_a_failing_trainjob_fails_the_task_with_the_ranks_one_line(local):
    params = {"model": "zoo:teacher", "dataset": store.join(local["root"], "no-such-dataset"), "steps": 1}
    with pytest.raises(LaunchError) as e:
        trainjob.run_stage("train", params, num_nodes=1, gpus_per_node=0, env=local["env"],
                           packages=local["packages"], client=trainjob.local_client(), timeout=600)  # fmt: skip
    msg = str(e.value)
    assert msg.startswith("stage train: rank 0 of 1 failed: ") and "no-such-dataset" in msg and "\n" not in msg
