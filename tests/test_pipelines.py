"""The compiled pipelines: in sync with the source, identical to `kfp dsl compile`, and wired as promised
(every knob a parameter with a default, GPU placement and credentials from parameters, explicit caching)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import pipelines
from dg_core.cli import main as dguard
from pipelines._args import read_parameters
from pipelines.compile import compile_one

ROOT = Path(pipelines.__file__).resolve().parent.parent
GPU_STAGES = {"calibrate", "distill", "evaluate", "evaluate-teacher", "evaluate-floor", "diagnose", "train"}
UNCACHED = {"pin-models", "plan-attacks", "list-releases", "prep", "publish", "reject", "reject-calibration"}


def load(name: str) -> tuple[dict, dict]:
    docs = list(yaml.safe_load_all(pipelines.compiled_path(name).read_text()))
    return docs[0], (docs[1] if len(docs) > 1 else {})


def all_tasks(spec: dict):
    """(dag component name, task name, task spec, component spec) for every task at every nesting level."""
    comps = dict(spec["components"])
    comps["root"] = spec["root"]
    for cname, c in comps.items():
        for tname, t in (c.get("dag") or {}).get("tasks", {}).items():
            yield cname, tname, t, comps[t["componentRef"]["name"]], comps


@pytest.mark.parametrize("name", list(pipelines.PIPELINES))
def test_compiled_yaml_is_in_sync_with_source(name, tmp_path):
    fresh = tmp_path / f"{name}.yaml"
    compile_one(name, fresh)
    committed = pipelines.compiled_path(name)
    assert committed.is_file(), f"{committed} missing: run `dguard compile`"
    assert fresh.read_bytes() == committed.read_bytes(), f"{committed} is out of date: run `dguard compile`"


@pytest.mark.parametrize("name", list(pipelines.PIPELINES))
def test_kfp_cli_compile_gives_the_same_package(name, tmp_path):
    module = ROOT / "pipelines" / f"{name}.py"
    func = pipelines.load(name).pipeline_func.__name__
    out = tmp_path / "cli.yaml"
    env = {**os.environ, "PYTHONHASHSEED": "random"}
    kfp_cli = Path(sys.executable).parent / "kfp"
    r = subprocess.run(
        [str(kfp_cli), "dsl", "compile", "--py", str(module), "--function", func, "--output", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert out.read_bytes() == pipelines.compiled_path(name).read_bytes()


def test_dguard_compile_check_detects_stale_files(tmp_path, capsys):
    out = tmp_path / "compiled"
    assert dguard(["compile", "diagnose", "--out", str(out)]) == 0
    assert dguard(["compile", "diagnose", "--out", str(out), "--check"]) == 0
    (out / "diagnose.yaml").write_text((out / "diagnose.yaml").read_text().replace("dguard-diagnose", "other"))
    assert dguard(["compile", "diagnose", "--out", str(out), "--check"]) == 2
    assert "out of date" in capsys.readouterr().err
    assert dguard(["compile", "nope", "--out", str(out)]) == 2


@pytest.mark.parametrize("name", list(pipelines.PIPELINES))
def test_every_parameter_has_a_default(name):
    params = read_parameters(pipelines.compiled_path(name))
    assert params
    assert [k for k, v in params.items() if v["required"]] == []
    for k in (
        "store_root",
        "s3_secret",
        "env_config_map",
        "image",
        "gpu_image",
        "accelerator_type",
        "accelerator_count",
    ):
        assert k in params, f"{name} lacks the infrastructure parameter {k}"


@pytest.mark.parametrize("name", list(pipelines.PIPELINES))
def test_kubernetes_settings_reference_inputs_of_their_own_dag(name):
    """kfp-kubernetes settings must name an input of the DAG the task sits in (a nesting bug in kfp's merge
    otherwise cross-wires them); and every task gets the S3 Secret and the settings ConfigMap."""
    spec, platform = load(name)
    execs = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]

    def refs(o):
        if isinstance(o, dict):
            for k, v in o.items():
                yield from ([v] if k == "componentInputParameter" else refs(v))
        elif isinstance(o, list):
            for v in o:
                yield from refs(v)

    seen = 0
    for cname, tname, _t, comp, comps in all_tasks(spec):
        label = comp.get("executorLabel")
        if not label:
            continue
        cfg = execs[label]
        inputs = comps[cname].get("inputDefinitions", {}).get("parameters", {})
        for r in set(refs(cfg)):
            assert r in inputs, f"{name}: {tname} in {cname}: setting refers to {r!r}, not an input of its DAG"
        assert {k["secretKey"] for k in cfg["secretAsEnv"][0]["keyToEnv"]} == {
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
        }
        assert "configMapNameParameter" in cfg["configMapAsEnv"][0]
        assert "secretNameParameter" in cfg["secretAsEnv"][0]
        seen += 1
    assert seen >= 2


@pytest.mark.parametrize("name", list(pipelines.PIPELINES))
def test_gpu_placement_comes_from_parameters(name):
    spec, platform = load(name)
    execs = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    gpu_tasks = 0
    for _c, tname, _t, comp, _comps in all_tasks(spec):
        label = comp.get("executorLabel")
        if not label:
            continue
        container = spec["deploymentSpec"]["executors"][label]["container"]
        base = tname.rsplit("-", 1)[0] if tname[-1].isdigit() else tname
        accel = container.get("resources", {}).get("accelerator", {})
        if base in GPU_STAGES:
            gpu_tasks += 1
            assert "gpu_image" in container["image"], tname  # the CUDA image, from a parameter
            assert "accelerator_type" in accel.get("resourceType", ""), tname
            assert "accelerator_count" in accel.get("resourceCount", ""), tname
            assert "nodeSelectorJson" in execs[label]["nodeSelector"], tname
            assert "tolerationJson" in execs[label]["tolerations"][0], tname
        else:
            assert not accel, f"{tname} should not ask for a GPU"
            assert "pipelinechannel--image" in container["image"], tname  # the CPU image, from a parameter
    assert gpu_tasks >= 1


@pytest.mark.parametrize("name", list(pipelines.PIPELINES))
def test_caching_is_explicit_on_every_task(name):
    spec, _ = load(name)
    for _c, tname, t, comp, _comps in all_tasks(spec):
        if not comp.get("executorLabel"):
            continue
        base = tname.rsplit("-", 1)[0] if tname[-1].isdigit() else tname
        enabled = t.get("cachingOptions", {}).get("enableCache", False)
        assert enabled == (base not in UNCACHED), f"{name}: {tname} caching {enabled}"


def test_calibrate_graph_has_the_promised_shape():
    spec, _ = load("calibrate")
    tasks = {tname for _c, tname, *_ in all_tasks(spec)}
    for needed in ("pin-models", "prep", "evaluate-teacher", "calibrate", "plan-attacks", "distill", "report", "gate",
                   "publish", "for-loop-1", "condition-2"):  # fmt: skip
        assert needed in tasks, needed
    conds = [t["triggerPolicy"]["condition"] for _c, _n, t, *_ in all_tasks(spec) if "triggerPolicy" in t]
    assert any("gate-Output" in c and "true" in c for c in conds)


def test_components_are_documented_for_the_ui():
    """Each component's docstring is its help in the Kubeflow UI; each folder has a README."""
    import importlib

    for d in sorted((ROOT / "components").iterdir()):
        if not (d / "component.py").is_file():
            continue
        assert (d / "README.md").is_file(), f"{d}/README.md missing"
        mod = importlib.import_module(f"components.{d.name}.component")
        comps = [v for v in vars(mod).values() if hasattr(v, "component_spec")]
        assert comps, d
        for c in comps:
            assert c.component_spec.description and len(c.component_spec.description) > 60, c.name
            assert c.component_spec.implementation.container.image.startswith("ghcr.io/distillation-guards/dguard:")
        readme = (d / "README.md").read_text()
        for c in comps:
            for n in list(c.component_spec.inputs or {}) + list(c.component_spec.outputs or {}):
                assert f"`{n}`" in readme, f"{d}/README.md does not document {n}: run python -m components._readme"


def test_run_needs_local_and_checks_arguments_before_running(tmp_path, capsys):
    assert dguard(["run", "calibrate"]) == 2
    assert "pass --local to run here, or use `dguard submit calibrate --host URL`" in capsys.readouterr().err
    assert dguard(["run", "calibrate", "--local", "--outputs", str(tmp_path / "kfp"), "etta=1"]) == 2
    assert "unknown pipeline argument 'etta'" in capsys.readouterr().err
    assert not (tmp_path / "kfp").exists()  # nothing ran


def test_local_arguments_layer_small_defaults_under_user_values(tmp_path):
    from pipelines.local import LOCAL_DEFAULTS, local_arguments

    root = (tmp_path / "s").as_uri()
    args = local_arguments("reharden", root, ["attack_steps=7", "publish=false"])
    assert args["store_root"] == root
    assert args["releases_prefix"] == f"{root}/releases" and args["hardened_prefix"] == f"{root}/hardened"
    assert args["attack_steps"] == 7 and args["publish"] is False
    assert args["calibrate_steps"] == LOCAL_DEFAULTS["reharden"]["calibrate_steps"]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_a_failing_task_surfaces_its_one_line_error(tmp_path, capsys, monkeypatch):
    from dg_core import store

    monkeypatch.chdir(tmp_path)
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text("{}")
    m = store.publish(d, (tmp_path / "store" / "m").as_uri())["uri"]
    rc = dguard(["run", "diagnose", "--local", "--store", str(tmp_path / "store"), "--outputs", str(tmp_path / "kfp"),
                 f"teacher={m}", f"student={m}", "prep_options={n: 0}"])  # fmt: skip
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "Inner task failed: 'prep'" in err and "config field 'n'" in err


def _executors(name: str):
    """(task name, container spec, kubernetes executor config, task spec) of every executing task."""
    spec, platform = load(name)
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for _c, tname, t, comp, _comps in all_tasks(spec):
        label = comp.get("executorLabel")
        if label:
            yield tname, spec["deploymentSpec"]["executors"][label]["container"], k8s[label], t


@pytest.mark.parametrize("name", list(pipelines.PIPELINES))
def test_every_task_has_resources_retries_and_run_identity(name):
    """CPU/memory requests and limits come from the per-class parameters; idempotent tasks retry with backoff;
    GPU tasks get the ephemeral model-cache volume; every pod knows its KFP run, task and attempt."""
    from pipelines._k8s import CACHE_MOUNT, NOT_IDEMPOTENT

    params = read_parameters(pipelines.compiled_path(name))
    for k in ("light_cpu_request", "light_memory_limit", "gpu_cpu_request", "gpu_memory_limit"):
        assert params[k]["type"] == "STRING" and params[k]["default"]
    for tname, container, k8s, task in _executors(name):
        base = tname.rsplit("-", 1)[0] if tname[-1].isdigit() else tname
        cls = "gpu" if base in GPU_STAGES else "light"
        res = container["resources"]
        for key, param in (("resourceCpuRequest", "cpu_request"), ("resourceCpuLimit", "cpu_limit"),
                           ("resourceMemoryRequest", "memory_request"), ("resourceMemoryLimit", "memory_limit")):  # fmt: skip
            assert f"pipelinechannel--{cls}_{param}" in res[key], f"{name}: {tname} {key} = {res.get(key)}"
        retry = task.get("retryPolicy")
        if tname in NOT_IDEMPOTENT:
            assert retry is None, f"{tname} writes mutable state: no automatic retry"
        else:
            assert retry["maxRetryCount"] == 2 and retry["backoffDuration"] == "30s", tname
            assert retry["backoffFactor"] == 2.0 and retry["backoffMaxDuration"] == "900s", tname
        vols = k8s.get("genericEphemeralVolume", [])
        if cls == "gpu":
            (v,) = vols
            assert v["mountPath"] == CACHE_MOUNT and v["size"] == "50Gi" and v["defaultStorageClass"] is True
        else:
            assert vols == []
        env = {e["name"]: e["fieldPath"] for e in k8s["fieldPathAsEnv"]}
        assert env == {"DG_RUN_ID": "metadata.labels['pipeline/runid']", "DG_ATTEMPT": "metadata.name"}
        assert {"name": "DG_TASK", "value": tname} in container["env"]
        assert "podMetadata" not in k8s and "imagePullSecret" not in k8s  # optional: off by default


def test_attack_loop_parallelism_is_capped():
    spec, _ = load("calibrate")
    judge = spec["components"]["comp-dguard-judge"]["dag"]["tasks"]
    (loop,) = [t for n, t in judge.items() if n.startswith("for-loop")]
    assert loop["iteratorPolicy"]["parallelismLimit"] == 4


def test_compile_options_reach_the_ir(tmp_path, capsys):
    """Kueue queue, image pull secrets, retries, parallelism and the cache volume are compile options."""
    out = tmp_path / "c"
    rc = dguard(["compile", "calibrate", "--out", str(out), "--option", "kueue_queue=gpu-q", "--option",
                 "image_pull_secrets=[regcred]", "--option", "attack_parallelism=9", "--option", "retries=0",
                 "--option", "cache_size=200Gi", "--option", "cache_storage_class=fast"])  # fmt: skip
    assert rc == 0
    docs = list(yaml.safe_load_all((out / "calibrate.yaml").read_text()))
    k8s = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for label, cfg in k8s.items():
        assert cfg["podMetadata"]["labels"] == {"kueue.x-k8s.io/queue-name": "gpu-q"}, label
        assert [s["secretName"] for s in cfg["imagePullSecret"]] == ["regcred"], label
    assert k8s["exec-distill"]["genericEphemeralVolume"][0]["size"] == "200Gi"
    assert k8s["exec-distill"]["genericEphemeralVolume"][0]["storageClassName"] == "fast"
    text = (out / "calibrate.yaml").read_text()
    assert "retryPolicy" not in text and "parallelismLimit: 9" in text
    # The committed package keeps the defaults, and options never overwrite it.
    assert "kueue" not in pipelines.compiled_path("calibrate").read_text()
    assert dguard(["compile", "calibrate", "--option", "retries=1"]) == 2
    assert "pass --out DIR" in capsys.readouterr().err
