"""`dguard upload | submit | schedule`: put the compiled pipelines on a Kubeflow Pipelines server.

Everything goes through ``kfp.Client`` (KFP API v2beta1), using the compiled packages in
``pipelines/compiled/`` so that what runs is exactly what was reviewed. The `kfp` CLI equivalent of
``dguard submit calibrate --host URL eta=-1`` is::

    kfp --endpoint URL run create --experiment-name distillation-guards \\
        --package-file pipelines/compiled/calibrate.yaml eta=-1

Authentication follows kfp's conventions: a bearer token from ``$KF_PIPELINES_TOKEN``, else the projected
service-account token at ``$KF_PIPELINES_SA_TOKEN_PATH`` (default ``/var/run/secrets/kubeflow/pipelines/token``)
when that file exists, else none (port-forwarded or open endpoints). The host comes from ``--host`` or
``$KF_PIPELINES_ENDPOINT``. Tokens are never printed or logged.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from dg_core import __version__
from dg_core.errors import DGError
from pipelines import PIPELINES, compiled_path
from pipelines._args import parse_arguments

log = logging.getLogger("dguard.remote")

TOKEN_ENV = "KF_PIPELINES_TOKEN"
ENDPOINT_ENV = "KF_PIPELINES_ENDPOINT"
SA_TOKEN_ENV = "KF_PIPELINES_SA_TOKEN_PATH"
SA_TOKEN_DEFAULT = "/var/run/secrets/kubeflow/pipelines/token"
DEFAULT_EXPERIMENT = "distillation-guards"
#: Display name of each pipeline on the server (what the UI lists).
DISPLAY_PREFIX = "dguard-"


def add_arguments(parser: argparse.ArgumentParser, verb: str) -> None:
    """Options of `dguard upload`, `dguard submit` and `dguard schedule`."""
    parser.add_argument(
        "--host", default=None, help=f"KFP API endpoint, e.g. http://localhost:8888 (default ${ENDPOINT_ENV})"
    )
    parser.add_argument("--namespace", default=None, help="Kubernetes namespace (multi-user Kubeflow)")
    parser.add_argument("--ssl-ca-cert", default=None, help="CA bundle to verify the server's TLS certificate")
    from pipelines.compile import add_option_argument

    add_option_argument(parser)
    if verb == "upload":
        parser.add_argument("names", nargs="*", help=f"pipelines to upload ({', '.join(PIPELINES)})")
        parser.add_argument("--all", action="store_true", help="upload every pipeline")
        return
    parser.add_argument("pipeline", help=f"pipeline name ({', '.join(PIPELINES)})")
    parser.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help="experiment (created when missing)")
    parser.add_argument(
        "--package", default=None, help="compiled pipeline YAML (default pipelines/compiled/<name>.yaml)"
    )
    parser.add_argument("--service-account", default=None, help="Kubernetes service account the run uses")
    parser.add_argument("--pipeline-root", default=None, help="root for KFP's own artifacts (e.g. s3://bucket/kfp)")
    parser.add_argument(
        "--no-cache", action="store_true", help="disable caching for every task (default: each task's compiled setting)"
    )
    if verb == "submit":
        parser.add_argument("--run-name", default=None, help="display name of the run")
    else:
        parser.add_argument(
            "--cron",
            default=None,
            help="schedule: 5-field cron ('0 3 * * *'), 6-field KFP cron with seconds, or @daily/@hourly/@every 6h",
        )
        parser.add_argument(
            "--delete", action="store_true", help="delete the recurring run of this name instead (helm uninstall)"
        )
        parser.add_argument("--name", default=None, help="recurring run name (default dguard-<pipeline>-schedule)")
        parser.add_argument("--replace", action="store_true", help="replace a recurring run of the same name")
        parser.add_argument("--start-time", default=None, help="RFC3339 time the schedule starts (default now)")
    parser.add_argument("overrides", nargs="*", help="pipeline arguments as key=value")


def main(args: argparse.Namespace, verb: str) -> int:
    """Dispatch one remote verb; failures of input or of the server come back as one-line DGErrors."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="dguard-compile-") as tmp:
        if verb == "upload":
            names = list(PIPELINES) if args.all else list(args.names)
            if not names:
                raise DGError(f"dguard upload: name the pipelines to upload ({', '.join(PIPELINES)}) or pass --all")
            if args.all and args.names:
                raise DGError("dguard upload: pass pipeline names or --all, not both")
            packages = {n: _package(n, None, args.option, tmp) for n in names}
            client = connect(args)
            for name, package in packages.items():
                upload(client, name, package, namespace=args.namespace)
            return 0
        if verb == "schedule" and args.delete:
            unschedule(connect(args), args)
            return 0
        if verb == "schedule" and not args.cron:
            raise DGError("dguard schedule: --cron is required (e.g. --cron '0 3 * * *'), or pass --delete")
        package = _package(args.pipeline, args.package, args.option, tmp)
        arguments = parse_arguments(package, args.overrides)
        client = connect(args)
        if verb == "submit":
            submit(client, args, package, arguments)
        else:
            schedule(client, args, package, arguments)
    return 0


# --------------------------------------------------------------------------------------------- connection


def _package(name: str, override: str | None, options: list[str] | None = None, tmp: str = "") -> Path:
    """The committed package of ``name`` (or ``--package``); with compile ``--option``s, a fresh one in ``tmp``."""
    if options:
        if override:
            raise DGError("pass --package or --option, not both (--option compiles the package itself)")
        from pipelines.compile import compile_one, parse_options

        path = Path(tmp) / f"{name}.yaml"
        compile_one(name, path, parse_options(options))
        return path
    path = Path(override) if override else compiled_path(name)
    if not path.is_file():
        raise DGError(f"compiled pipeline {str(path)!r} not found: run `dguard compile` first")
    return path


def connect(args: argparse.Namespace) -> Any:
    """A ``kfp.Client`` for ``--host``, authenticated from the environment, after a fast reachability check."""
    import kfp
    from kfp.client import ServiceAccountTokenVolumeCredentials

    host = (args.host or os.environ.get(ENDPOINT_ENV) or "").rstrip("/")
    if not host:
        raise DGError(
            f"no Kubeflow Pipelines endpoint: pass --host URL (e.g. http://localhost:8888) or set ${ENDPOINT_ENV}"
        )
    if not re.match(r"^https?://[^/\s]+", host):
        raise DGError(f"--host {host!r}: expected an http:// or https:// URL of the KFP API")
    token = os.environ.get(TOKEN_ENV) or None
    credentials = None
    source = "none"
    if token:
        source = f"${TOKEN_ENV}"
    else:
        sa_path = os.environ.get(SA_TOKEN_ENV)
        if sa_path and not Path(sa_path).is_file():
            raise DGError(f"${SA_TOKEN_ENV}={sa_path!r}: no such token file")
        sa_path = sa_path or SA_TOKEN_DEFAULT
        if Path(sa_path).is_file():
            credentials = ServiceAccountTokenVolumeCredentials(path=sa_path)
            token = Path(sa_path).read_text().strip()
            source = f"service-account token {sa_path}"
    log.info("connecting to %s (auth: %s)", host, source)
    _probe(host, token, args.ssl_ca_cert)
    kwargs: dict[str, Any] = {"host": host, "existing_token": token if credentials is None else None}
    if credentials is not None:
        kwargs["credentials"] = credentials
    if args.namespace:
        kwargs["namespace"] = args.namespace
    if args.ssl_ca_cert:
        kwargs["ssl_ca_cert"] = args.ssl_ca_cert
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "only works with KFP v2.0.0-beta.2 and later"
        client = _call(host, "connect", lambda: kfp.Client(**kwargs))
    client.dguard_host = host  # for messages; kfp.Client keeps it only in private config
    return client


def _probe(host: str, token: str | None, ca: str | None) -> None:
    """One GET of the health endpoint, so a wrong host or token fails in a second, not after kfp's retries."""
    import requests

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    url = f"{host}/apis/v2beta1/healthz"
    try:
        r = requests.get(url, headers=headers, timeout=15, verify=ca or True)
    except requests.RequestException as e:
        raise DGError(f"cannot reach Kubeflow Pipelines at {host} ({type(e).__name__}): check --host") from None
    if r.status_code in (401, 403):
        raise DGError(
            f"Kubeflow Pipelines at {host} refused the credentials (HTTP {r.status_code}): "
            f"set ${TOKEN_ENV} or ${SA_TOKEN_ENV}"
        )
    if r.status_code >= 400:
        raise DGError(f"Kubeflow Pipelines at {host}: GET /apis/v2beta1/healthz answered HTTP {r.status_code}")


def _call(host: str, what: str, fn: Any) -> Any:
    """Run one client call, turning API and network failures into one-line DGErrors."""
    import kfp_server_api
    import urllib3

    try:
        return fn()
    except kfp_server_api.ApiException as e:
        raise DGError(
            f"Kubeflow Pipelines at {host}: {what} failed with HTTP {e.status}: {_server_message(e)}"
        ) from None
    except urllib3.exceptions.HTTPError as e:
        raise DGError(f"Kubeflow Pipelines at {host}: {what} failed ({type(e).__name__})") from None
    except ValueError as e:  # kfp.Client's own checks (duplicate names, bad package)
        raise DGError(f"Kubeflow Pipelines at {host}: {what}: {e}") from None


def _server_message(e: Any) -> str:
    try:
        body = json.loads(e.body or "{}")
        return str(body.get("message") or body.get("error") or e.reason)[:300]
    except (ValueError, AttributeError):
        return str(e.reason)


def _eq_filter(key: str, value: str) -> str:
    return json.dumps({"predicates": [{"operation": "EQUALS", "key": key, "stringValue": value}]})


def _host(client: Any) -> str:
    return getattr(client, "dguard_host", "the KFP server")


# --------------------------------------------------------------------------------------------- verbs


def version_name(package: Path) -> str:
    """Pipeline version name: package version + content hash, so re-uploading the same YAML is a no-op."""
    digest = hashlib.sha256(package.read_bytes()).hexdigest()[:12]
    return f"{__version__}-{digest}"


def upload(client: Any, name: str, package: Path, namespace: str | None = None) -> dict[str, str]:
    """Upload ``package`` as a new version of pipeline ``dguard-<name>`` (created when missing); idempotent."""
    host = _host(client)
    display = DISPLAY_PREFIX + name
    version = version_name(package)
    found = _call(
        host,
        f"look up pipeline {display}",
        lambda: client.pipelines.pipeline_service_list_pipelines(
            filter=_eq_filter("display_name", display), namespace=namespace, page_size=2
        ),
    )
    matches = [p for p in found.pipelines or [] if p.display_name == display]
    if len(matches) > 1:
        raise DGError(f"Kubeflow Pipelines at {host}: several pipelines are named {display}; expected one")
    pipeline_id = matches[0].pipeline_id if matches else None
    if pipeline_id is None:
        created = _call(
            host,
            f"create pipeline {display}",
            lambda: client.pipelines.pipeline_service_create_pipeline(
                pipeline=client.api_models.V2beta1Pipeline(
                    display_name=display, description=_description(name), namespace=namespace
                )
            ),
        )
        pipeline_id = created.pipeline_id
    else:
        found = _call(
            host,
            f"list versions of {display}",
            lambda: client.pipelines.pipeline_service_list_pipeline_versions(
                pipeline_id=pipeline_id, filter=_eq_filter("display_name", version), page_size=1
            ),
        )
        if found.pipeline_versions:
            v = found.pipeline_versions[0]
            print(f"{name}: up to date (pipeline {display} {pipeline_id} already has version {version})")
            return {"pipeline_id": pipeline_id, "version_id": v.pipeline_version_id, "version": version}
    v = _call(
        host,
        f"upload version {version} of {display}",
        lambda: client.upload_pipeline_version(
            str(package), version, pipeline_id=pipeline_id, description=f"distillation-guards {__version__}"
        ),
    )
    print(f"{name}: uploaded version {version} of pipeline {display} ({pipeline_id})")
    return {"pipeline_id": pipeline_id, "version_id": v.pipeline_version_id, "version": version}


def _description(name: str) -> str:
    import importlib

    try:
        doc = importlib.import_module(PIPELINES[name]).__doc__ or ""
    except ImportError:
        doc = ""
    return (doc.strip().splitlines() or [f"distillation-guards {name}"])[0]


def submit(client: Any, args: argparse.Namespace, package: Path, arguments: dict[str, Any]) -> str:
    """Create one run of the compiled ``package``; returns the run id."""
    host = _host(client)
    result = _call(
        host,
        f"submit {args.pipeline}",
        lambda: client.create_run_from_pipeline_package(
            pipeline_file=str(package),
            arguments=arguments,
            run_name=args.run_name,
            experiment_name=args.experiment,
            namespace=args.namespace,
            pipeline_root=args.pipeline_root,
            enable_caching=False if args.no_cache else None,
            service_account=args.service_account,
        ),
    )
    print(f"submitted {args.pipeline}: run {result.run_id} in experiment {args.experiment!r}")
    return result.run_id


def normalise_cron(expr: str) -> str:
    """KFP wants robfig cron with a seconds field; accept the usual 5-field form and descriptors too."""
    expr = " ".join(expr.split())
    if expr.startswith("@"):
        if re.fullmatch(r"@(yearly|annually|monthly|weekly|daily|midnight|hourly|every \d+[smh](\d+[smh])*)", expr):
            return expr
        raise DGError(f"--cron {expr!r}: unknown descriptor, expected @daily, @hourly, @weekly or @every 6h")
    fields = expr.split(" ")
    if len(fields) not in (5, 6) or not all(re.fullmatch(r"[0-9A-Za-z*?/,\-]+", f) for f in fields):
        raise DGError(f"--cron {expr!r}: expected 5 fields ('0 3 * * *') or 6 with seconds first ('0 0 3 * * *')")
    return expr if len(fields) == 6 else "0 " + expr


def _recurring_runs(client: Any, args: argparse.Namespace, name: str) -> tuple[Any, list[Any]]:
    """The experiment and its recurring runs named ``name``."""
    host = _host(client)
    experiment = _call(
        host,
        f"get experiment {args.experiment}",
        lambda: client.create_experiment(args.experiment, namespace=args.namespace),
    )
    existing = _call(
        host,
        "list recurring runs",
        lambda: client.list_recurring_runs(
            experiment_id=experiment.experiment_id, filter=_eq_filter("display_name", name), page_size=10
        ),
    )
    return experiment, [rr for rr in existing.recurring_runs or [] if rr.display_name == name]


def _schedule_name(args: argparse.Namespace) -> str:
    return args.name or f"{DISPLAY_PREFIX}{args.pipeline}-schedule"


def unschedule(client: Any, args: argparse.Namespace) -> int:
    """Delete the recurring run(s) of this name (the chart's pre-delete hook); none is not an error."""
    name = _schedule_name(args)
    _, found = _recurring_runs(client, args, name)
    for rr in found:
        _call(
            _host(client),
            f"delete recurring run {rr.recurring_run_id}",
            lambda rr=rr: client.delete_recurring_run(rr.recurring_run_id),
        )
        print(f"deleted recurring run {name!r} ({rr.recurring_run_id})")
    if not found:
        print(f"no recurring run {name!r} in experiment {args.experiment!r}: nothing to delete")
    return len(found)


def schedule(client: Any, args: argparse.Namespace, package: Path, arguments: dict[str, Any]) -> str | None:
    """Create the recurring run (max concurrency 1, no catch-up); keeps an existing one unless --replace.

    The run is created from the pipeline *version* on the server (uploaded first when missing, as `dguard
    upload` does), not from the package file, so the UI shows which version each scheduled run used.
    """
    host = _host(client)
    cron = normalise_cron(args.cron)
    name = _schedule_name(args)
    experiment, found = _recurring_runs(client, args, name)
    for rr in found:
        if not args.replace:
            print(f"recurring run {name!r} already exists ({rr.recurring_run_id}); pass --replace to update it")
            return None
        _call(
            host,
            f"delete recurring run {rr.recurring_run_id}",
            lambda rr=rr: client.delete_recurring_run(rr.recurring_run_id),
        )
        print(f"replaced recurring run {name!r} ({rr.recurring_run_id})")
    version = upload(client, args.pipeline, package, namespace=args.namespace)
    created = _call(
        host,
        f"schedule {args.pipeline}",
        lambda: client.create_recurring_run(
            experiment_id=experiment.experiment_id,
            job_name=name,
            description=f"distillation-guards {args.pipeline}, cron {cron}",
            start_time=args.start_time,
            cron_expression=cron,
            max_concurrency=1,
            no_catchup=True,
            params=arguments,
            pipeline_id=version["pipeline_id"],
            version_id=version["version_id"],
            enable_caching=False if args.no_cache else None,
            pipeline_root=args.pipeline_root,
            service_account=args.service_account,
        ),
    )
    print(
        f"scheduled {args.pipeline}: recurring run {created.recurring_run_id} {name!r} cron {cron!r}, "
        f"pipeline version {version['version']} ({version['version_id']})"
    )
    return created.recurring_run_id
