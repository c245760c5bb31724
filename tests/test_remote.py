"""`dguard upload | submit | schedule` against a fake Kubeflow Pipelines API (v2beta1) on loopback.

The fake server implements just the endpoints kfp.Client calls, keeps state (so idempotency is real) and
records every request; the tests assert on what was sent: paths, query, bodies, the bearer token.
"""

# No `from __future__ import annotations`: kfp reads real annotations of components and pipelines.

import json
import logging
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest
import yaml
from kfp import compiler, dsl

import pipelines
from dg_core.cli import main as dguard

TOKEN = "s3cr3t-token-value-0123456789"


class FakeKFP:
    """In-memory KFP v2beta1 API: pipelines, versions, experiments, runs, recurring runs."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.pipelines: dict[str, dict] = {}
        self.versions: dict[str, dict] = {}
        self.experiments: dict[str, dict] = {}
        self.runs: dict[str, dict] = {}
        self.recurring: dict[str, dict] = {}
        self.status_override: int | None = None
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # keep pytest output clean
                pass

            def _handle(self, method: str) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                u = urlparse(self.path)
                req = {
                    "method": method,
                    "path": u.path,
                    "query": {k: v[0] for k, v in parse_qs(u.query).items()},
                    "headers": dict(self.headers),
                    "body": body,
                }
                fake.requests.append(req)
                if fake.status_override:
                    return self._send(fake.status_override, {"message": "denied"})
                code, payload = fake.route(req)
                self._send(code, payload)

            def _send(self, code: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._handle("GET")

            def do_POST(self):
                self._handle("POST")

            def do_DELETE(self):
                self._handle("DELETE")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @staticmethod
    def _filter_value(q: dict) -> str | None:
        if "filter" not in q:
            return None
        preds = json.loads(q["filter"])["predicates"]
        assert preds[0]["key"] == "display_name" and preds[0]["operation"] in ("EQUALS", 1)
        return preds[0].get("stringValue", preds[0].get("string_value"))

    def route(self, r: dict) -> tuple[int, dict]:
        m, p, q = r["method"], r["path"], r["query"]
        base = "/apis/v2beta1"
        if (m, p) == ("GET", f"{base}/healthz"):
            return 200, {"multi_user": False}
        if (m, p) == ("GET", f"{base}/pipelines"):
            name = self._filter_value(q)
            return 200, {"pipelines": [x for x in self.pipelines.values() if name in (None, x["display_name"])]}
        if (m, p) == ("POST", f"{base}/pipelines"):
            body = json.loads(r["body"])
            pid = str(uuid.uuid4())
            self.pipelines[pid] = {"pipeline_id": pid, **body}
            return 200, self.pipelines[pid]
        if (m, p) == ("POST", f"{base}/pipelines/upload_version"):
            vid = str(uuid.uuid4())
            self.versions[vid] = {
                "pipeline_id": q["pipelineid"],
                "pipeline_version_id": vid,
                "display_name": q["name"],
                "body": r["body"],
            }
            return 200, {k: v for k, v in self.versions[vid].items() if k != "body"}
        if m == "GET" and p.startswith(f"{base}/pipelines/") and p.endswith("/versions"):
            pid = p.split("/")[4]
            name = self._filter_value(q)
            found = [
                {k: v for k, v in x.items() if k != "body"}
                for x in self.versions.values()
                if x["pipeline_id"] == pid and name in (None, x["display_name"])
            ]
            return 200, {"pipeline_versions": found}
        if (m, p) == ("GET", f"{base}/experiments"):
            name = self._filter_value(q)
            return 200, {"experiments": [x for x in self.experiments.values() if x["display_name"] == name]}
        if (m, p) == ("POST", f"{base}/experiments"):
            body = json.loads(r["body"])
            eid = str(uuid.uuid4())
            self.experiments[eid] = {"experiment_id": eid, **body}
            return 200, self.experiments[eid]
        if (m, p) == ("POST", f"{base}/runs"):
            body = json.loads(r["body"])
            rid = str(uuid.uuid4())
            self.runs[rid] = {"run_id": rid, **body}
            return 200, {"run_id": rid, "display_name": body["display_name"], "experiment_id": body["experiment_id"]}
        if (m, p) == ("GET", f"{base}/recurringruns"):
            name = self._filter_value(q)
            found = [
                {"recurring_run_id": k, "display_name": v["display_name"], "experiment_id": v["experiment_id"]}
                for k, v in self.recurring.items()
                if v["experiment_id"] == q.get("experiment_id") and name in (None, v["display_name"])
            ]
            return 200, {"recurringRuns": found}
        if (m, p) == ("POST", f"{base}/recurringruns"):
            body = json.loads(r["body"])
            rid = str(uuid.uuid4())
            self.recurring[rid] = body
            return 200, {"recurring_run_id": rid, "display_name": body["display_name"]}
        if m == "DELETE" and p.startswith(f"{base}/recurringruns/"):
            rid = p.rsplit("/", 1)[1]
            if rid not in self.recurring:
                return 404, {"message": "not found"}
            del self.recurring[rid]
            return 200, {}
        return 404, {"message": f"fake KFP: no route {m} {p}"}

    def calls(self, method: str, path_suffix: str) -> list[dict]:
        return [r for r in self.requests if r["method"] == method and r["path"].endswith(path_suffix)]


@pytest.fixture()
def kfp_server():
    fake = FakeKFP()
    fake.thread.start()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


@dsl.component(base_image="python:3.11")
def _echo(eta: float, steps: int, model: str, dry: bool, students: list) -> str:
    return f"{eta} {steps} {model} {dry} {students}"


@dsl.pipeline(name="dguard-fixture", description="A small pipeline with typed parameters.")
def _fixture_pipeline(
    eta: float = -1.0,
    steps: int = 10,
    model: str = "zoo:teacher",
    dry: bool = False,
    students: list = ["a"],  # noqa: B006 - KFP takes literal defaults
):
    _echo(eta=eta, steps=steps, model=model, dry=dry, students=students)


@pytest.fixture()
def compiled(tmp_path, monkeypatch):
    """Every pipeline name backed by the fixture package in a temporary compiled/ folder."""
    out = tmp_path / "compiled"
    out.mkdir()
    for name in pipelines.PIPELINES:
        compiler.Compiler().compile(_fixture_pipeline, str(out / f"{name}.yaml"))
    monkeypatch.setattr(pipelines, "COMPILED_DIR", out)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.config/kfp/context.json of the developer's
    monkeypatch.setattr("kfp.client.client.Client._LOCAL_KFP_CONTEXT", str(tmp_path / "kfp-context.json"))
    monkeypatch.delenv("KF_PIPELINES_TOKEN", raising=False)
    monkeypatch.delenv("KF_PIPELINES_ENDPOINT", raising=False)
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", "")
    return out


def _bearer(req: dict) -> str | None:
    return {k.lower(): v for k, v in req["headers"].items()}.get("authorization")


def test_submit_sends_typed_arguments_and_token(kfp_server, compiled, monkeypatch, capsys, caplog):
    monkeypatch.setenv("KF_PIPELINES_TOKEN", TOKEN)
    caplog.set_level(logging.DEBUG)
    rc = dguard(
        ["-v", "submit", "calibrate", "--host", kfp_server.url, "--experiment", "exp-a", "--run-name", "r1"]
        + ["eta=-0.5", "steps=3", "model=s3://models/v1", "dry=true", "students=[x, y]"]
    )
    assert rc == 0
    (create_exp,) = kfp_server.calls("POST", "/experiments")
    assert json.loads(create_exp["body"])["display_name"] == "exp-a"
    (run,) = kfp_server.calls("POST", "/runs")
    body = json.loads(run["body"])
    assert body["display_name"] == "r1"
    assert body["experiment_id"] == json.loads(create_exp["body"]).get("experiment_id", body["experiment_id"])
    assert body["runtime_config"]["parameters"] == {
        "eta": -0.5,
        "steps": 3,
        "model": "s3://models/v1",
        "dry": True,
        "students": ["x", "y"],
    }
    # The package went inline and unchanged, so the cluster runs exactly the compiled file.
    sent_spec = body["pipeline_spec"]
    on_disk = yaml.safe_load((compiled / "calibrate.yaml").read_text())
    assert sent_spec["root"] == on_disk["root"]
    assert sent_spec["pipelineInfo"]["name"] == "dguard-fixture"
    # Every request carried the token; it never showed up in output or logs.
    assert kfp_server.requests and all(_bearer(r) == f"Bearer {TOKEN}" for r in kfp_server.requests)
    out = capsys.readouterr()
    assert "submitted calibrate: run" in out.out
    assert TOKEN not in out.out + out.err + caplog.text


def test_submit_no_cache_disables_every_task(kfp_server, compiled):
    assert dguard(["submit", "diagnose", "--host", kfp_server.url, "--no-cache"]) == 0
    (run,) = kfp_server.calls("POST", "/runs")
    tasks = json.loads(run["body"])["pipeline_spec"]["root"]["dag"]["tasks"]
    assert tasks and all(t["cachingOptions"].get("enableCache", False) is False for t in tasks.values())
    assert json.loads(run["body"])["runtime_config"].get("parameters") in (None, {})


@pytest.mark.parametrize(
    "arg, message",
    [
        ("etaa=1", "unknown pipeline argument 'etaa'"),
        ("steps=2.5", "pipeline argument 'steps': got '2.5', expected an integer"),
        ("eta=abc", "pipeline argument 'eta': got 'abc', expected a number"),
        ("dry=maybe", "expected true or false"),
        ("students={a: 1}", "expected a list"),
        ("eta", "expected key=value"),
    ],
)
def test_submit_rejects_bad_arguments_before_contacting_server(kfp_server, compiled, capsys, arg, message):
    rc = dguard(["submit", "calibrate", "--host", kfp_server.url, arg])
    assert rc == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert kfp_server.requests == []


def test_unknown_pipeline_and_missing_host(compiled, capsys):
    assert dguard(["submit", "nope", "--host", "http://127.0.0.1:1"]) == 2
    assert "unknown pipeline 'nope': expected one of diagnose, calibrate, reharden" in capsys.readouterr().err
    assert dguard(["submit", "calibrate"]) == 2
    assert "pass --host URL" in capsys.readouterr().err


def test_unreachable_host_and_rejected_token(kfp_server, compiled, monkeypatch, capsys):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    s.close()
    assert dguard(["submit", "calibrate", "--host", dead]) == 2
    assert "cannot reach Kubeflow Pipelines" in capsys.readouterr().err
    monkeypatch.setenv("KF_PIPELINES_TOKEN", TOKEN)
    kfp_server.status_override = 401
    assert dguard(["submit", "calibrate", "--host", kfp_server.url]) == 2
    err = capsys.readouterr().err
    assert "refused the credentials (HTTP 401)" in err and TOKEN not in err
    assert len(kfp_server.requests) == 1  # one probe, no retries, nothing created


def test_service_account_token_file_is_used(kfp_server, compiled, tmp_path, monkeypatch):
    tok = tmp_path / "token"
    tok.write_text("projected-sa-token\n")
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(tok))
    assert dguard(["submit", "calibrate", "--host", kfp_server.url]) == 0
    assert {_bearer(r) for r in kfp_server.requests} == {"Bearer projected-sa-token"}
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(tmp_path / "missing"))
    assert dguard(["submit", "calibrate", "--host", kfp_server.url]) == 2


def test_upload_all_is_idempotent_and_versions_by_content(kfp_server, compiled, capsys):
    assert dguard(["upload", "--all", "--host", kfp_server.url]) == 0
    names = sorted(p["display_name"] for p in kfp_server.pipelines.values())
    assert names == ["dguard-calibrate", "dguard-diagnose", "dguard-reharden"]
    uploads = kfp_server.calls("POST", "/pipelines/upload_version")
    assert len(uploads) == 3
    package = (compiled / "calibrate.yaml").read_bytes()
    assert all(package in u["body"] for u in uploads)  # multipart body carries the compiled YAML
    assert len({u["query"]["name"] for u in uploads}) == 1  # same content -> same version name
    capsys.readouterr()

    # Second upload: nothing new is created.
    assert dguard(["upload", "--all", "--host", kfp_server.url]) == 0
    assert len(kfp_server.calls("POST", "/pipelines/upload_version")) == 3
    assert len(kfp_server.calls("POST", "/pipelines")) == 3
    assert capsys.readouterr().out.count("up to date") == 3

    # Changed source -> a new version of the existing pipeline, not a new pipeline.
    (compiled / "calibrate.yaml").write_text((compiled / "calibrate.yaml").read_text() + "\n# changed\n")
    assert dguard(["upload", "calibrate", "--host", kfp_server.url]) == 0
    uploads = kfp_server.calls("POST", "/pipelines/upload_version")
    assert len(uploads) == 4 and uploads[-1]["query"]["name"] != uploads[0]["query"]["name"]
    assert len(kfp_server.pipelines) == 3


def test_upload_needs_names_or_all(compiled, capsys):
    assert dguard(["upload", "--host", "http://127.0.0.1:1"]) == 2
    assert "or pass --all" in capsys.readouterr().err


def test_schedule_reharden_recurring_run(kfp_server, compiled, capsys):
    rc = dguard(["schedule", "reharden", "--host", kfp_server.url, "--cron", "0 3 * * *", "steps=5"])
    assert rc == 0
    (req,) = kfp_server.calls("POST", "/recurringruns")
    body = json.loads(req["body"])
    assert body["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * *"  # seconds field added for KFP
    assert int(body["max_concurrency"]) == 1
    assert body["no_catchup"] is True
    assert body["mode"] == "ENABLE"
    assert body["display_name"] == "dguard-reharden-schedule"
    assert body["runtime_config"]["parameters"] == {"steps": 5}
    # The recurring run uses the pipeline version on the server (uploaded first), not an inline package.
    assert "pipeline_spec" not in body
    ref = body["pipeline_version_reference"]
    version = kfp_server.versions[ref["pipeline_version_id"]]
    assert version["pipeline_id"] == ref["pipeline_id"]
    assert kfp_server.pipelines[ref["pipeline_id"]]["display_name"] == "dguard-reharden"
    assert (compiled / "reharden.yaml").read_bytes() in version["body"]
    assert ref["pipeline_version_id"] in capsys.readouterr().out
    exp = kfp_server.experiments[body["experiment_id"]]
    assert exp["display_name"] == "distillation-guards"

    # Again: kept, not duplicated; --replace swaps it for a new one.
    assert dguard(["schedule", "reharden", "--host", kfp_server.url, "--cron", "0 3 * * *"]) == 0
    assert len(kfp_server.recurring) == 1 and "already exists" in capsys.readouterr().out
    old = next(iter(kfp_server.recurring))
    assert dguard(["schedule", "reharden", "--host", kfp_server.url, "--cron", "@every 6h", "--replace"]) == 0
    assert len(kfp_server.recurring) == 1 and old not in kfp_server.recurring
    assert kfp_server.calls("DELETE", f"/recurringruns/{old}")
    (new,) = kfp_server.recurring.values()
    assert new["trigger"]["cron_schedule"]["cron"] == "@every 6h"
    assert len(kfp_server.experiments) == 1
    assert len(kfp_server.versions) == 1  # the same package: the same version, not a new upload each time


@pytest.mark.parametrize("cron", ["0 3 * *", "* * * * * * *", "@sometimes", "0 3 * * * ;rm"])
def test_schedule_rejects_bad_cron(kfp_server, compiled, capsys, cron):
    assert dguard(["schedule", "reharden", "--host", kfp_server.url, "--cron", cron]) == 2
    assert "--cron" in capsys.readouterr().err
    assert kfp_server.calls("POST", "/recurringruns") == []


def test_submit_real_calibrate_package_with_chart_style_arguments(kfp_server, monkeypatch, tmp_path):
    """The committed package, with arguments spelled the way the Helm chart passes them (JSON, a,b lists)."""
    monkeypatch.setattr("kfp.client.client.Client._LOCAL_KFP_CONTEXT", str(tmp_path / "ctx.json"))
    monkeypatch.delenv("KF_PIPELINES_TOKEN", raising=False)
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", "")
    args = [
        "eta=-0.5",
        "attack_suite=sft,kd",
        'gpu_tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]',
        'gpu_node_selector={"node-pool": "gpu"}',
        "accelerator_count=2",
        "publish=false",
    ]
    assert dguard(["submit", "calibrate", "--host", kfp_server.url, *args]) == 0
    (run,) = kfp_server.calls("POST", "/runs")
    body = json.loads(run["body"])
    assert body["runtime_config"]["parameters"] == {
        "eta": -0.5,
        "attack_suite": ["sft", "kd"],
        "gpu_tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "gpu_node_selector": {"node-pool": "gpu"},
        "accelerator_count": 2,
        "publish": False,
    }
    # Both documents travel: the pipeline and the kfp-kubernetes platform spec (GPU placement, Secret).
    assert body["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == "dguard-calibrate"
    k8s = body["pipeline_spec"]["platform_spec"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert any("secretAsEnv" in e and "nodeSelector" in e for e in k8s.values())


def test_upload_in_a_namespace(kfp_server, compiled):
    assert dguard(["upload", "diagnose", "--host", kfp_server.url, "--namespace", "team-a"]) == 0
    (lookup,) = [r for r in kfp_server.calls("GET", "/pipelines") if "filter" in r["query"]]
    assert lookup["query"]["namespace"] == "team-a"
    (created,) = kfp_server.pipelines.values()
    assert created["namespace"] == "team-a" and created["display_name"] == "dguard-diagnose"


def test_upload_with_compile_options_uploads_a_package_built_with_them(kfp_server, compiled):
    """--option compiles the real pipeline with cluster settings (image pull secrets, Kueue) and uploads that."""
    rc = dguard(["upload", "diagnose", "--host", kfp_server.url, "--option", "image_pull_secrets=[regcred]",
                 "--option", "kueue_queue=team-a"])  # fmt: skip
    assert rc == 0
    (v,) = kfp_server.versions.values()
    body = v["body"].decode()
    assert "regcred" in body and "kueue.x-k8s.io/queue-name: team-a" in body
    assert "dguard-diagnose" in body and "dguard-fixture" not in body


def test_bad_compile_option_fails_before_contacting_the_server(kfp_server, compiled, capsys):
    assert dguard(["upload", "diagnose", "--host", kfp_server.url, "--option", "retries=-1"]) == 2
    assert "config field 'retries'" in capsys.readouterr().err
    assert kfp_server.requests == []


def test_schedule_delete_removes_the_recurring_run(kfp_server, compiled, capsys):
    """What the chart's pre-delete hook runs: the recurring run goes; running it again is not an error."""
    assert dguard(["schedule", "reharden", "--host", kfp_server.url, "--cron", "@daily"]) == 0
    (rid,) = kfp_server.recurring
    assert dguard(["schedule", "reharden", "--host", kfp_server.url, "--delete"]) == 0
    assert kfp_server.recurring == {} and kfp_server.calls("DELETE", f"/recurringruns/{rid}")
    assert dguard(["schedule", "reharden", "--host", kfp_server.url, "--delete"]) == 0
    assert "nothing to delete" in capsys.readouterr().out
    assert dguard(["schedule", "reharden", "--host", kfp_server.url]) == 2
    assert "--cron is required" in capsys.readouterr().err
