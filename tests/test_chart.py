"""The Helm chart, checked with the real helm binary (`scripts/install-helm.sh`) and kubernetes-validate.

Renders with the default values and with every file under charts/distillation-guards/ci/ (existing Secret,
Pushgateway on, tolerations, upload only, ...), validates each manifest against the Kubernetes OpenAPI schemas,
and checks that the schema refuses bad values with a message that names the value.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import subprocess
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "distillation-guards"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
HELM = Path(os.environ.get("DG_HELM", ROOT / ".tools" / "bin" / "helm"))
# The oldest Kubernetes the chart claims (Chart.yaml kubeVersion) and the newest kubernetes-validate knows.
KUBE_VERSIONS = ("1.27.0", kubernetes_validate.latest_version())
CREDS = ["--set", "s3.accessKeyId=minio,s3.secretAccessKey=minio123"]


@pytest.fixture(scope="session")
def helm() -> Path:
    if not (HELM.is_file() and os.access(HELM, os.X_OK)):
        pytest.fail(f"helm not found at {HELM}: run `bash scripts/install-helm.sh` (or `make tools`) first")
    return HELM


def run_helm(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(helm), *args], capture_output=True, text=True, timeout=120, cwd=ROOT)


def render(helm: Path, *args: str, namespace: str = "ml-team", kube_version: str | None = None) -> list[dict]:
    cmd = ["template", "rel", str(CHART), "--namespace", namespace, *args]
    if kube_version:
        cmd += ["--kube-version", kube_version]
    proc = run_helm(helm, *cmd)
    assert proc.returncode == 0, f"helm template {' '.join(args)} failed:\n{proc.stderr}"
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def render_error(helm: Path, *args: str) -> str:
    proc = run_helm(helm, "template", "rel", str(CHART), *args)
    assert proc.returncode != 0, f"helm template {' '.join(args)} should have been refused"
    return proc.stderr


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict], kind: str) -> dict:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {[d['metadata']['name'] for d in found]}"
    return found[0]


def setup_job(docs: list[dict]) -> dict:
    """The post-install/post-upgrade Job (the pre-delete cleanup Job is the other one)."""
    (job,) = [d for d in by_kind(docs, "Job") if d["metadata"]["annotations"]["helm.sh/hook"] != "pre-delete"]
    return job


def cleanup_job(docs: list[dict]) -> dict:
    (job,) = [d for d in by_kind(docs, "Job") if d["metadata"]["annotations"]["helm.sh/hook"] == "pre-delete"]
    return job


def job_containers(job: dict) -> list[dict]:
    spec = job["spec"]["template"]["spec"]
    return spec.get("initContainers", []) + spec["containers"]


def values_of(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


# -------------------------------------------------------------------------------------- lint and validate


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.stem)
def test_helm_lint_strict(helm: Path, values: Path) -> None:
    proc = run_helm(helm, "lint", "--strict", str(CHART), "-f", str(values), "--kube-version", KUBE_VERSIONS[-1])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.stem)
def test_rendered_manifests_are_valid_kubernetes(helm: Path, values: Path, kube_version: str) -> None:
    docs = render(helm, "-f", str(values), kube_version=kube_version)
    assert {"ConfigMap", "Job"} <= {d["kind"] for d in docs}
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, kube_version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{values.stem}: {doc['kind']}/{doc['metadata']['name']} invalid for {kube_version}: {e}")
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == "rel" and labels["app.kubernetes.io/managed-by"] == "Helm"
        assert doc["metadata"]["namespace"] == "ml-team"


def test_validator_rejects_a_broken_manifest(helm: Path) -> None:
    """The validation above is live: the same Job with a misspelt field is refused."""
    job = setup_job(render(helm, *CREDS))
    job["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, KUBE_VERSIONS[-1], strict=True)


def test_schema_is_valid_draft7_and_accepts_the_shipped_values() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    defaults = values_of(CHART / "values.yaml")
    jsonschema.Draft7Validator(schema).validate(defaults)
    assert set(defaults) <= set(schema["properties"]), "every top-level value is described by the schema"
    for path in CI_VALUES:
        merged = _deep_merge(defaults, values_of(path))
        jsonschema.Draft7Validator(schema).validate(merged)


def _deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(a[k], v) if isinstance(v, dict) and isinstance(a.get(k), dict) else v
    return out


# ------------------------------------------------------------------------------------------ bad values


BAD_VALUES = [
    # (helm args, text the error must contain)
    (["--set-json", 'setupJob.backoffLimit="3"'], "at '/setupJob/backoffLimit': got string, want integer"),
    (["--set", "reharden.cron=0 3 * *"], "at '/reharden/cron'"),
    (["--set", "reharden.cron=every day at 3"], "at '/reharden/cron'"),
    (["--set", "reharden.cron=@fortnightly"], "at '/reharden/cron'"),
    (["--set", "reharden.crn=0 0 3 * * *"], "additional properties 'crn' not allowed"),
    (["--set", "imagee.tag=1.0"], "additional properties 'imagee' not allowed"),
    (["--set", "image.pullPolicy=Sometimes"], "at '/image/pullPolicy': value must be one of"),
    (["--set", "kfp.host=ml-pipeline.kubeflow:8888"], "at '/kfp/host'"),
    (["--set", "s3.endpoint=http://minio:9000/bucket"], "at '/s3/endpoint'"),
    (["--set", "reharden.releasesPrefix=models/releases"], "at '/reharden/releasesPrefix'"),
    (["--set", "reharden.params.releases_prefix=s3://x/y"], "at '/reharden/params/releases_prefix'"),
    (["--set", "reharden.params.s3_secret=other"], "at '/reharden/params/s3_secret'"),
    (["--set", "reharden.params.image=other:1"], "at '/reharden/params/image'"),
    (["--set", "reharden.gpu.acceleratorCount=two"], "at '/reharden/gpu/acceleratorCount'"),
    (["--set", "reharden.storeRoot=/data/dguard"], "at '/reharden/storeRoot': '/data/dguard' does not match"),
    (["--set", "reharden.params.bad-name=1"], "at '/reharden/params': additional properties 'bad-name' not allowed"),
    (["--set", "kfp.serviceAccountToken.expirationSeconds=300"], "at '/kfp/serviceAccountToken/expirationSeconds'"),
    (["--set-json", 'tolerations=[{"key":"gpu","effect":"NoScheduel"}]'], "at '/tolerations/0/effect'"),
    (["--set-json", 'tolerations=[{"key":"gpu","operatr":"Exists"}]'], "additional properties 'operatr' not allowed"),
    (["--set", "setupJob.resources.requests.memory=lots"], "at '/setupJob/resources/requests/memory'"),
    (["--set", "pushgateway.port=70000"], "at '/pushgateway/port'"),
    (["--set", "pushgateway.url=pgw:9091"], "at '/pushgateway/url': 'pgw:9091' does not match pattern"),
    (["--set", "fullnameOverride=My_Release"], "at '/fullnameOverride'"),
    (["--set-json", "kfp.host=null"], "/kfp"),
]


@pytest.mark.parametrize(("args", "message"), BAD_VALUES, ids=[" ".join(a[1:]) for a, _ in BAD_VALUES])
def test_schema_rejects_bad_values(helm: Path, args: list[str], message: str) -> None:
    err = render_error(helm, *CREDS, *args)
    assert "don't meet the specifications of the schema" in err, err
    assert message in err, f"expected {message!r} in:\n{err}"


CROSS_FIELD = [
    ([], "set s3.existingSecret to a Secret with keys AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"),
    (["--set", "s3.accessKeyId=a"], "or set both s3.accessKeyId and s3.secretAccessKey"),
    ([*CREDS, "--set", "s3.existingSecret=mine"], 'existingSecret "mine" and accessKeyId/secretAccessKey are both set'),
    (
        [*CREDS, "--set", "reharden.hardenedPrefix=s3://models/releases/hardened"],
        'hardenedPrefix "s3://models/releases/hardened" and releasesPrefix "s3://models/releases" overlap',
    ),
    (
        [*CREDS, "--set", "serviceAccount.create=false"],
        "set serviceAccount.name when serviceAccount.create is false",
    ),
]


@pytest.mark.parametrize(("args", "message"), CROSS_FIELD, ids=["no-creds", "half-creds", "both", "overlap", "sa"])
def test_cross_field_mistakes_fail_with_one_clear_line(helm: Path, args: list[str], message: str) -> None:
    err = render_error(helm, *args)
    assert message in err, err
    # the same prefixes are fine when they only share a name prefix, not a path
    if "overlap" in message:
        render(helm, *CREDS, "--set", "reharden.hardenedPrefix=s3://models/releases-hardened")


# --------------------------------------------------------------------------------------- what it renders


def test_defaults_create_secret_configmap_rbac_and_the_hook_job(helm: Path) -> None:
    docs = render(helm, *CREDS)
    assert sorted(d["kind"] for d in docs) == sorted(
        ["ServiceAccount", "Secret", "ConfigMap", "Role", "RoleBinding", "Job", "Job"]
    ), "Pushgateway is off by default; the Jobs: setup (post-install/upgrade) and cleanup (pre-delete)"
    secret = one(docs, "Secret")
    assert set(secret["data"]) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    cm = one(docs, "ConfigMap")["data"]
    assert cm["AWS_ENDPOINT_URL"] == "http://minio-service.kubeflow:9000"
    assert "DG_PUSHGATEWAY_URL" not in cm

    job = setup_job(docs)
    ann = job["metadata"]["annotations"]
    assert set(ann["helm.sh/hook"].split(",")) == {"post-install", "post-upgrade"}
    assert ann["helm.sh/hook-delete-policy"] == "before-hook-creation"
    upload, schedule = job_containers(job)
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    defaults = values_of(CHART / "values.yaml")
    assert upload["image"] == schedule["image"] == f"ghcr.io/distillation-guards/dguard:{chart['appVersion']}"
    # the init container uploads, then the main container schedules: `dguard` is the image's entry point
    assert upload["args"] == ["upload", "--all", "--host", "$(KFP_HOST)"]
    args = schedule["args"]
    assert args[:4] == ["schedule", "reharden", "--host", "$(KFP_HOST)"]
    assert args[args.index("--cron") + 1] == defaults["reharden"]["cron"]
    assert f"releases_prefix={defaults['reharden']['releasesPrefix']}" in args
    assert f"hardened_prefix={defaults['reharden']['hardenedPrefix']}" in args
    assert f"s3_secret={secret['metadata']['name']}" in args
    assert f"env_config_map={one(docs, 'ConfigMap')['metadata']['name']}" in args
    assert not any(a.startswith("store_root=") for a in args), "empty storeRoot keeps the pipeline's default"
    for c in (upload, schedule):
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert env["KFP_HOST"] == "http://ml-pipeline.kubeflow:8888"
        assert env["KF_PIPELINES_SA_TOKEN_PATH"] == "/var/run/secrets/kubeflow/pipelines/token"
        assert not any("AWS_SECRET" in e["name"] for e in c["env"]), "the Job needs no store credentials"


def test_existing_secret_is_referenced_not_created(helm: Path) -> None:
    docs = render(helm, "--set", "s3.existingSecret=team-s3")
    assert not by_kind(docs, "Secret")
    proc = run_helm(helm, "install", "rel", str(CHART), "--dry-run=client", "--set", "s3.existingSecret=team-s3")
    assert proc.returncode == 0, proc.stderr
    notes = proc.stdout.split("NOTES:", 1)[1]
    assert "Secret    team-s3" in notes and "not managed by this chart" in notes
    assert "kubectl -n default logs job/rel-distillation-guards-setup --all-containers" in notes


def test_pushgateway_on_is_wired_to_the_configmap(helm: Path) -> None:
    docs = render(helm, *CREDS, "--set", "pushgateway.enabled=true,pushgateway.port=9092", namespace="obs")
    dep, svc = one(docs, "Deployment"), one(docs, "Service")
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items(), "the Service must select the Pushgateway pod"
    assert dep["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    assert container["ports"][0]["containerPort"] == 9092
    assert "--web.listen-address=:9092" in container["args"]
    assert svc["spec"]["ports"][0]["port"] == 9092
    url = one(docs, "ConfigMap")["data"]["DG_PUSHGATEWAY_URL"]
    assert url == f"http://{svc['metadata']['name']}.obs.svc:9092"
    assert not by_kind(docs, "PersistentVolumeClaim"), "no PVC unless persistence is on"

    docs = render(helm, *CREDS, "--set", "pushgateway.enabled=true,pushgateway.persistence.enabled=true")
    pvc = one(docs, "PersistentVolumeClaim")
    dep = one(docs, "Deployment")
    assert (
        dep["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    )
    assert "--persistence.file=/data/metrics" in dep["spec"]["template"]["spec"]["containers"][0]["args"]

    # an external Pushgateway: its URL, no Deployment
    docs = render(helm, *CREDS, "--set", "pushgateway.url=http://pgw.monitoring:9091")
    assert not by_kind(docs, "Deployment")
    assert one(docs, "ConfigMap")["data"]["DG_PUSHGATEWAY_URL"] == "http://pgw.monitoring:9091"


def test_full_values_reach_the_pods(helm: Path) -> None:
    values = values_of(CHART / "ci" / "full-values.yaml")
    docs = render(helm, "-f", str(CHART / "ci" / "full-values.yaml"))
    job = setup_job(docs)
    for pod in (job["spec"]["template"]["spec"], one(docs, "Deployment")["spec"]["template"]["spec"]):
        assert pod["tolerations"] == values["tolerations"]
        assert pod["nodeSelector"] == values["nodeSelector"]
        assert pod["affinity"] == values["affinity"]
        assert pod["imagePullSecrets"] == values["imagePullSecrets"]
    spec = job["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == "dguard-setup"
    upload, schedule = job_containers(job)
    assert upload["image"] == "registry.example.com:5000/ml/dguard:0.1.0-rc1"
    assert upload["resources"] == values["setupJob"]["resources"]
    assert upload["args"][upload["args"].index("--namespace") + 1] == "team-a"
    args = schedule["args"]
    assert args[args.index("--namespace") + 1] == "team-a"
    assert args[args.index("--experiment") + 1] == "hardening"
    assert args[args.index("--service-account") + 1] == "default-editor"
    assert args[args.index("--cron") + 1] == "@every 6h"
    # the store wiring and GPU placement of the scheduled runs
    assert {"s3_secret=team-a-s3", "env_config_map=dguard-env", "store_root=s3://team-a-dguard/runs"} <= set(args)
    assert {"accelerator_type=nvidia.com/gpu", "accelerator_count=2"} <= set(args)
    gpu = {
        a.split("=", 1)[0]: json.loads(a.split("=", 1)[1])
        for a in args
        if a.startswith(("gpu_node_selector=", "gpu_tolerations="))
    }
    assert {"image=registry.example.com:5000/ml/dguard:0.1.0-rc1",
            "gpu_image=registry.example.com:5000/ml/dguard:0.1.0-rc1-cuda"} <= set(args)  # fmt: skip
    assert gpu == {
        "gpu_node_selector": values["reharden"]["gpu"]["nodeSelector"],
        "gpu_tolerations": values["reharden"]["gpu"]["tolerations"],
    }
    # extra pipeline arguments: integers printed as integers (not 1e+05), lists and mappings as JSON
    assert {"eta=-1", "beta=0.2", "calibrate_steps=100000", "publish=true"} <= set(args)
    assert {'attack_suite=["sft","kd"]', 'prep_options={"limit":512}'} <= set(args)
    cm = one(docs, "ConfigMap")["data"]
    assert (cm["S3_VERIFY_SSL"], cm["DG_S3_CREATE_BUCKET"], cm["AWS_REGION"]) == ("0", "1", "eu-west-1")
    assert job["spec"]["template"]["metadata"]["labels"]["team"] == "a"


def test_upload_only_runs_one_container_and_no_rbac(helm: Path) -> None:
    docs = render(helm, "-f", str(CHART / "ci" / "upload-only-values.yaml"))
    assert not by_kind(docs, "Role") and not by_kind(docs, "ServiceAccount")
    job = setup_job(docs)
    spec = job["spec"]["template"]["spec"]
    assert "initContainers" not in spec
    (c,) = spec["containers"]
    assert c["args"][:2] == ["upload", "--all"]
    assert spec["serviceAccountName"] == "pipeline-runner"
    assert not any(v["name"] == "kfp-token" for v in spec["volumes"])
    assert "KF_PIPELINES_SA_TOKEN_PATH" not in {e["name"] for e in c["env"]}
    assert not by_kind(render(helm, *CREDS, "--set", "setupJob.enabled=false"), "Job")


def test_rbac_is_least_privilege_and_bound_to_the_jobs_account(helm: Path) -> None:
    docs = render(helm, *CREDS)
    role, binding, sa = one(docs, "Role"), one(docs, "RoleBinding"), one(docs, "ServiceAccount")
    for rule in role["rules"]:
        assert rule["apiGroups"] == ["pipelines.kubeflow.org"], "the Job touches no Kubernetes API group"
        assert "*" not in rule["verbs"] and "*" not in rule["resources"]
        assert not {"update", "patch", "deletecollection"} & set(rule["verbs"])
    granted = {(r, v) for rule in role["rules"] for r in rule["resources"] for v in rule["verbs"]}
    assert ("jobs", "delete") in granted, "`schedule --replace` deletes the previous recurring run"
    assert ("pipelines/versions", "create") in granted and ("experiments", "create") in granted
    assert not any(r == "runs" for r, _ in granted), "the schedule creates runs server-side"
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": "ml-team"}]
    job = setup_job(docs)
    spec = job["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == sa["metadata"]["name"]
    assert sa["automountServiceAccountToken"] is False and spec["automountServiceAccountToken"] is False
    (token,) = [v for v in spec["volumes"] if v["name"] == "kfp-token"]
    assert token["projected"]["sources"][0]["serviceAccountToken"]["audience"] == "pipelines.kubeflow.org"


def test_pods_are_restricted_and_match_the_images_user(helm: Path) -> None:
    users = re.findall(r"^USER\s+(\d+)", (ROOT / "images" / "Dockerfile.cpu").read_text(), re.M)
    assert users, "images/Dockerfile.cpu sets no numeric USER"
    image_uid = int(users[-1])
    docs = render(helm, *CREDS, "--set", "pushgateway.enabled=true")
    for pod in (setup_job(docs)["spec"]["template"]["spec"], one(docs, "Deployment")["spec"]["template"]["spec"]):
        psc = pod["securityContext"]
        assert psc["runAsNonRoot"] is True and psc["seccompProfile"]["type"] == "RuntimeDefault"
        for c in pod.get("initContainers", []) + pod["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
            assert sc["capabilities"]["drop"] == ["ALL"]
            assert c["resources"]["limits"]["memory"]
    job_pod = setup_job(docs)["spec"]["template"]["spec"]
    assert job_pod["securityContext"]["runAsUser"] == image_uid
    # read-only root: kfp.Client writes ~/.config/kfp, so $HOME and /tmp are emptyDirs
    mounts = {m["mountPath"] for m in job_pod["containers"][0]["volumeMounts"]}
    assert {"/home/dguard", "/tmp"} <= mounts


def test_job_arguments_parse_with_the_dguard_cli(helm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The hook Job's arguments go through `dguard`'s real dispatch and argument parsing (flags, cron form);
    only the verb's network step is replaced by a recorder, since the example hosts are not to be contacted."""
    from dg_core import cli

    for values in CI_VALUES:
        job = setup_job(render(helm, "-f", str(values)))
        for c in job_containers(job):
            env = {e["name"]: e["value"] for e in c["env"]}
            argv = [re.sub(r"\$\((\w+)\)", lambda m, env=env: env[m.group(1)], a) for a in c["args"]]
            verb = argv[0]
            assert verb in cli.COMMANDS, f"{values.stem}: `dguard {verb}` is not a dguard command"
            mod = importlib.import_module(cli.COMMANDS[verb][0])
            seen: list[argparse.Namespace] = []
            monkeypatch.setattr(mod, "main", lambda ns, v, seen=seen: seen.append(ns) or 0)
            try:
                rc = cli.main(argv)
            except SystemExit as e:
                pytest.fail(f"{values.stem}: `dguard {' '.join(argv)}` is rejected by the CLI (exit {e.code})")
            assert rc == 0 and len(seen) == 1
            ns = seen[0]
            assert ns.host == env["KFP_HOST"]
            if verb == "schedule":
                assert ns.pipeline == "reharden" and ns.replace
                mod.normalise_cron(ns.cron)  # raises DGError on a cron the CLI would refuse
                assert {o.split("=", 1)[0] for o in ns.overrides} >= {"releases_prefix", "hardened_prefix"}
            else:
                assert ns.all


def test_cron_forms_the_schema_accepts_are_the_ones_the_cli_accepts(helm: Path) -> None:
    from dg_core.errors import DGError
    from pipelines.remote import normalise_cron

    schema = json.loads((CHART / "values.schema.json").read_text())
    pattern = re.compile(schema["properties"]["reharden"]["properties"]["cron"]["pattern"])
    cases = ["0 3 * * *", "0 0 3 * * *", "*/15 * * * *", "0 0 9 ? * MON-FRI", "@daily", "@every 6h", "@every 1h30m"]
    cases += ["0 3 * *", "0 0 0 3 * * * *", "@fortnightly", "every day", "@every", "0 3 * * * * *"]
    for expr in cases:
        try:
            normalise_cron(expr)
            cli_ok = True
        except DGError:
            cli_ok = False
        assert bool(pattern.search(expr)) == cli_ok, f"cron {expr!r}: schema and `dguard schedule` disagree"


def test_secret_and_configmap_keys_are_the_ones_the_components_read(helm: Path) -> None:
    """The pipeline tasks map these keys to env vars (kfp-kubernetes); a key the chart renames is lost silently."""
    from components._common import ENV_CONFIG_KEYS, S3_SECRET_KEYS

    docs = render(helm, *CREDS, "--set", "pushgateway.enabled=true")
    assert set(one(docs, "Secret")["data"]) == set(S3_SECRET_KEYS)
    assert set(one(docs, "ConfigMap")["data"]) == set(ENV_CONFIG_KEYS)


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.stem)
def test_scheduled_arguments_fit_the_compiled_reharden_pipeline(helm: Path, values: Path) -> None:
    """Every key=value the Job passes names a parameter of pipelines/compiled/reharden.yaml, with a valid type."""
    from pipelines import compiled_path
    from pipelines._args import parse_arguments, read_parameters

    job = setup_job(render(helm, "-f", str(values)))
    args = job_containers(job)[-1]["args"]
    overrides = [a for i, a in enumerate(args) if re.match(r"^[A-Za-z_]\w*=", a) and args[i - 1] != "--option"]
    if args[0] == "upload":
        assert not overrides
        return
    typed = parse_arguments(compiled_path("reharden"), overrides)  # DGError on an unknown name or a bad type
    params = read_parameters(compiled_path("reharden"))
    assert set(typed) == {o.split("=", 1)[0] for o in overrides}
    for name, value in typed.items():
        kind = params[name]["type"]
        if kind == "LIST":
            assert isinstance(value, list), name
        elif kind == "STRUCT":
            assert isinstance(value, dict), name


# ------------------------------------------------------------------------- runs, uninstall, Istio, identity


def _cli_namespace(argv: list[str], env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> argparse.Namespace:
    """Parse a Job's argv with the real dguard CLI (the network step replaced by a recorder)."""
    from dg_core import cli

    argv = [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], a) for a in argv]
    mod = importlib.import_module(cli.COMMANDS[argv[0]][0])
    seen: list[argparse.Namespace] = []
    monkeypatch.setattr(mod, "main", lambda ns, v: seen.append(ns) or 0)
    assert cli.main(argv) == 0 and len(seen) == 1
    return seen[0]


def test_scheduled_runs_get_the_charts_image_and_pull_secrets(helm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines.compile import parse_options

    docs = render(helm, *CREDS, "--set", "image.repository=mirror.example/ml/dguard,image.tag=1.2.3",
                  "--set", "imagePullSecrets[0].name=regcred")  # fmt: skip
    upload, schedule = job_containers(setup_job(docs))
    for c in (upload, schedule):
        assert c["image"] == "mirror.example/ml/dguard:1.2.3"
        ns = _cli_namespace(c["args"], {e["name"]: e["value"] for e in c["env"]}, monkeypatch)
        assert parse_options(ns.option).image_pull_secrets == ["regcred"]  # compiled into every task pod
    assert {"image=mirror.example/ml/dguard:1.2.3", "gpu_image=mirror.example/ml/dguard:1.2.3-cuda"} <= set(
        schedule["args"]
    )
    docs = render(helm, *CREDS, "--set", "image.gpuTag=1.2.3-cu124")
    args = job_containers(setup_job(docs))[-1]["args"]
    assert "gpu_image=ghcr.io/distillation-guards/dguard:1.2.3-cu124" in args
    assert not any(a == "--option" for a in args)  # no pull secrets: the committed packages as they are


def test_uninstall_hook_deletes_the_recurring_run(helm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    docs = render(helm, *CREDS, "--set", "kfp.namespace=team-a,kfp.experiment=nightly")
    job = cleanup_job(docs)
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-delete"
    assert "hook-succeeded" in job["metadata"]["annotations"]["helm.sh/hook-delete-policy"]
    (c,) = job_containers(job)
    ns = _cli_namespace(c["args"], {e["name"]: e["value"] for e in c["env"]}, monkeypatch)
    assert ns.delete and ns.pipeline == "reharden" and ns.experiment == "nightly" and ns.namespace == "team-a"
    assert ns.name is None  # the default name, the one the setup Job schedules under
    spec = job["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == setup_job(docs)["spec"]["template"]["spec"]["serviceAccountName"]
    (rule,) = [r for r in one(docs, "Role")["rules"] if r["resources"] == ["jobs"]]
    assert "delete" in rule["verbs"]
    for off in ("reharden.deleteOnUninstall=false", "reharden.enabled=false"):
        assert [d["metadata"]["name"] for d in by_kind(render(helm, *CREDS, "--set", off), "Job")] == [
            "rel-distillation-guards-setup"
        ]


def test_jobs_opt_out_of_istio_sidecars_by_default(helm: Path) -> None:
    docs = render(helm, *CREDS, "--set", "podAnnotations.team=a")
    for job in (setup_job(docs), cleanup_job(docs)):
        ann = job["spec"]["template"]["metadata"]["annotations"]
        assert ann == {"sidecar.istio.io/inject": "false", "team": "a"}
    docs = render(helm, *CREDS, "--set", "istio.sidecarInject=true")
    assert "annotations" not in setup_job(docs)["spec"]["template"]["metadata"]
    docs = render(helm, *CREDS, "--set-string", "podAnnotations.sidecar\\.istio\\.io/inject=true")
    assert setup_job(docs)["spec"]["template"]["metadata"]["annotations"]["sidecar.istio.io/inject"] == "true"


def test_workload_identity_needs_no_static_keys(helm: Path) -> None:
    arn = "arn:aws:iam::123456789012:role/dguard"
    docs = render(helm, "--set", "s3.workloadIdentity=true,reharden.runServiceAccount=default-editor",
                  "--set", f"serviceAccount.annotations.eks\\.amazonaws\\.com/role-arn={arn}")  # fmt: skip
    assert not by_kind(docs, "Secret")
    assert one(docs, "ServiceAccount")["metadata"]["annotations"] == {"eks.amazonaws.com/role-arn": arn}
    args = job_containers(setup_job(docs))[-1]["args"]
    assert args[args.index("--service-account") + 1] == "default-editor"
    err = render_error(helm, "--set", "s3.workloadIdentity=true,s3.accessKeyId=a,s3.secretAccessKey=b")
    assert "workloadIdentity takes credentials from the runs' ServiceAccount" in err
    assert "s3.workloadIdentity=true" in render_error(helm)  # the error for no credentials names the option


# ------------------------------------------------------------------ runs' ServiceAccount and Trainer RBAC


WI = ["--set", "s3.workloadIdentity=true,reharden.runServiceAccount=dguard-runs,runServiceAccount.create=true"]


def test_runs_service_account_is_created_with_irsa_or_workload_identity_annotations(helm: Path) -> None:
    arn = "arn:aws:iam::123456789012:role/dguard-s3"
    docs = render(helm, *WI, "--set", f"runServiceAccount.awsRoleArn={arn}")
    (sa,) = [d for d in by_kind(docs, "ServiceAccount") if d["metadata"]["name"] == "dguard-runs"]
    assert sa["metadata"]["annotations"] == {"eks.amazonaws.com/role-arn": arn}
    assert not by_kind(docs, "Secret"), "no static keys: no Secret is rendered"
    schedule = " ".join(setup_job(docs)["spec"]["template"]["spec"]["containers"][0]["args"])
    assert "--service-account dguard-runs" in schedule  # the runs use the account the chart annotated
    gsa = "dguard-s3@my-proj.iam.gserviceaccount.com"
    docs = render(helm, *WI, "--set", f"runServiceAccount.gcpServiceAccount={gsa}")
    (sa,) = [d for d in by_kind(docs, "ServiceAccount") if d["metadata"]["name"] == "dguard-runs"]
    assert sa["metadata"]["annotations"] == {"iam.gke.io/gcp-service-account": gsa}
    for doc in docs:
        kubernetes_validate.validate(doc, KUBE_VERSIONS[-1], strict=True)
    # off by default: the chart leaves an existing account (e.g. default-editor) alone
    assert [d["metadata"]["name"] for d in by_kind(render(helm, *CREDS), "ServiceAccount")] == [
        "rel-distillation-guards"
    ]


def test_runs_service_account_refuses_missing_name_identity_or_a_bad_arn(helm: Path) -> None:
    err = render_error(helm, "--set", "s3.workloadIdentity=true,runServiceAccount.create=true")
    assert "set reharden.runServiceAccount" in err
    assert "set runServiceAccount.awsRoleArn (IRSA)" in render_error(helm, *WI)
    err = render_error(helm, *WI, "--set", "runServiceAccount.awsRoleArn=not-an-arn")
    assert "awsRoleArn" in err and "not-an-arn" in err


def test_trainer_rbac_grants_trainjobs_to_the_runs_account_only_when_enabled(helm: Path) -> None:
    assert not [d for d in by_kind(render(helm, *CREDS), "Role") if d["metadata"]["name"].endswith("-trainjobs")]
    docs = render(helm, *CREDS, "--set", "trainer.enabled=true,reharden.runServiceAccount=dguard-runs")
    (role,) = [d for d in by_kind(docs, "Role") if d["metadata"]["name"].endswith("-trainjobs")]
    rule = next(r for r in role["rules"] if "trainjobs" in r["resources"])
    assert rule["apiGroups"] == ["trainer.kubeflow.org"] and {"create", "get", "watch", "delete"} <= set(rule["verbs"])
    assert any("pods/log" in r["resources"] for r in role["rules"])
    (binding,) = [d for d in by_kind(docs, "RoleBinding") if d["metadata"]["name"].endswith("-trainjobs")]
    assert binding["subjects"][0]["name"] == "dguard-runs" and binding["roleRef"]["name"] == role["metadata"]["name"]
    for doc in (role, binding):
        kubernetes_validate.validate(doc, KUBE_VERSIONS[-1], strict=True)
