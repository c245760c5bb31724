"""dg_core.launch: a stage in N real processes under accelerate launch / torchrun (gloo on CPU)."""

import json
import sys

import pytest
import yaml

import pipelines
from components import _common
from dg_core import launch, store
from dg_core.cli import run_stage as cli_run_stage
from dg_core.errors import DGError
from dg_core.stages import get_stage


@pytest.fixture()
def dataset(store_root):
    return cli_run_stage("prep", None, ["n=16", f"output={store.join(store_root, 'ds')}"])["uri"]


@pytest.mark.slow
def test_train_stage_runs_in_four_processes_and_rank0_summary_is_the_result(store_root, dataset):
    out = store.join(store_root, "trained/four")
    params = {"model": "zoo:teacher", "dataset": dataset, "steps": 1, "batch_size": 4, "warmup_steps": 0,
              "output": out}  # fmt: skip
    summary = _common.run_stage("train", params, {}, num_processes=4)  # what the train component calls
    ranks = summary["launch"]["ranks"]
    assert summary["launch"]["world_size"] == 4
    assert [r["rank"] for r in ranks] == [0, 1, 2, 3]
    assert {r["world_size"] for r in ranks} == {4} and sorted(r["local_rank"] for r in ranks) == [0, 1, 2, 3]
    assert len({r["pid"] for r in ranks}) == 4 and all(r["done"] for r in ranks)
    assert summary["model"] == out and store.is_published(out)
    # a stage not (yet) multi-process aware runs on rank 0 alone, the others only record themselves
    aware = bool(getattr(get_stage("train").load(), "MULTI_PROCESS", False))
    assert [r["ran_stage"] for r in ranks] == [True, aware, aware, aware]


def test_bad_config_fails_before_any_process_starts(store_root):
    with pytest.raises(DGError, match="steps"):
        launch.run_stage("train", {"model": "zoo:teacher", "dataset": "x", "steps": "many"}, 4)


def test_a_failing_rank_is_named_with_its_one_line_error(tmp_path):
    # rank 1 runs the worker on a config with a bad field; rank 0 has nothing to do and succeeds
    mod = tmp_path / "fail_on_rank.py"
    mod.write_text(
        "import os, sys\n"
        "if os.environ['RANK'] == '1':\n"
        "    from dg_core.launch import worker\n"
        "    raise SystemExit(worker.main(['evaluate', sys.argv[1]]))\n"
    )
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"model": "zoo:teacher", "dataset": "file:///nowhere", "limit": "all of them"}))
    env = {"PYTHONPATH": f"{tmp_path}:{':'.join(sys.path)}"}
    with pytest.raises(launch.LaunchError) as e:
        launch.launch(["fail_on_rank", str(cfg)], 2, env=env, launcher="torchrun", run_dir=tmp_path / "run")
    msg = str(e.value)
    assert msg.startswith("rank 1 of 2 failed: config field 'limit'") and "\n" not in msg
    assert e.value.exit_code == 2  # the rank's failure was bad input (a DGError), not a bug


@pytest.mark.parametrize("strategy", launch.STRATEGIES)
def test_shipped_accelerate_configs_load_with_accelerates_own_loader(strategy):
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(launch.config_file(strategy)))
    assert (
        str(cfg.distributed_type).split(".")[-1] == {"ddp": "MULTI_GPU", "fsdp": "FSDP", "zero3": "DEEPSPEED"}[strategy]
    )
    assert yaml.safe_load(launch.config_file(strategy).read_text())["num_machines"] == 1


def test_command_lines():
    acc = launch.command(["dg_core.launch.worker", "train", "c.json"], 4, strategy="fsdp", main_port=1234)
    assert acc[1:3] == ["-m", "accelerate.commands.launch"]
    assert acc[acc.index("--num_processes") + 1] == "4" and acc[-4:] == [
        "-m",
        "dg_core.launch.worker",
        "train",
        "c.json",
    ]
    assert acc[acc.index("--config_file") + 1].endswith("configs/fsdp.yaml")
    tr = launch.command(["m"], 2, launcher="torchrun", num_machines=3, machine_rank=1, main_port=9)
    assert "--nproc_per_node=2" in tr and "--nnodes=3" in tr and "--node_rank=1" in tr
    with pytest.raises(DGError, match="strategy 'bogus'"):
        launch.command(["m"], 2, strategy="bogus")
    with pytest.raises(DGError, match="num_processes=0"):
        launch.command(["m"], 0)


def test_gpu_tasks_of_the_pipelines_launch_one_process_per_accelerator():
    """A task with accelerator_count=4 gets num_processes=4: calibrate, the bootstrap train and every distill."""
    spec = next(d for d in yaml.safe_load_all(pipelines.compiled_path("calibrate").read_text()) if "root" in d)
    wired = {}

    def walk(dag):
        for name, task in dag.get("tasks", {}).items():
            p = task.get("inputs", {}).get("parameters", {})
            if "num_processes" in p:
                wired[name] = p["num_processes"]

    walk(spec["root"]["dag"])
    for comp in spec["components"].values():
        walk(comp.get("dag", {}))
    assert {"calibrate", "train", "distill"} <= set(wired)
    for name, src in wired.items():
        assert src.get("componentInputParameter", "").endswith("accelerator_count"), (name, src)
