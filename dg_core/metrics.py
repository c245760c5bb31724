"""Prometheus metrics of one stage run: pushed to a Pushgateway, or written as a node-exporter textfile.

Stages are batch jobs, so nothing is scraped from them: a :class:`StageMetrics` keeps counters, gauges and
histograms on a private registry and delivers them on :meth:`flush` —

- to ``$DG_PUSHGATEWAY_URL`` (job ``dguard``), with optional basic auth from ``$DG_PUSHGATEWAY_USER`` /
  ``$DG_PUSHGATEWAY_PASSWORD``;
- else, or when the push fails, to ``$DG_METRICS_DIR/<task>-<run>-<attempt>.prom`` (written atomically).

Every series is labelled, and every Pushgateway group keyed, by ``run``, ``stage``, ``task`` and ``attempt``:
on Kubeflow the pipelines set ``DG_RUN_ID`` (the KFP run UUID), ``DG_TASK`` (the task's name in the pipeline)
and ``DG_ATTEMPT`` (the pod name: one per retry and per loop iteration) in each task's environment, so parallel
distill pods never overwrite each other and every metric joins to its KFP run (pipelines/README.md shows the
PromQL). Locally ``run`` is a timestamp, ``task`` the stage and ``attempt`` host + process id.

The Pushgateway never forgets a group by itself. So each stage, when it closes, also deletes the groups of job
``dguard`` whose last push is older than ``$DG_PUSHGATEWAY_TTL`` seconds (default one day; 0 keeps everything):
a finished run's series stay scrapeable for a day, then go.

Metrics must never break a stage: a failed delivery is logged as a warning and training goes on. Misuse
(a bad metric name, one name used as two kinds) is a programming error and raises :class:`DGError`.

    with StageMetrics("calibrate", run_id) as m:
        for step in ...:
            m.inc("steps")
            m.set("reward_mean", r)
            m.observe("step_seconds", dt)
            m.maybe_flush()          # at most every 15 s
    # exit: records dguard_stage_success / dguard_stage_duration_seconds and flushes
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import re
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    delete_from_gateway,
    push_to_gateway,
    write_to_textfile,
)
from prometheus_client.exposition import basic_auth_handler, default_handler

from dg_core.errors import DGError

log = logging.getLogger("dg_core.metrics")

JOB = "dguard"
PREFIX = "dguard_"
LABELS = ("run", "stage", "task", "attempt")
DEFAULT_TTL_S = 86400.0
_NAME_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_KINDS = {"counter": Counter, "gauge": Gauge, "histogram": Histogram}


def default_run_id() -> str:
    """``$DG_RUN_ID`` (components set it from the KFP run id), else a local timestamp id."""
    return os.environ.get("DG_RUN_ID", "").strip() or "local-" + datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


def default_attempt() -> str:
    """``$DG_ATTEMPT`` (the pod name on Kubeflow), else this host and process."""
    return os.environ.get("DG_ATTEMPT", "").strip() or f"{socket.gethostname()}-{os.getpid()}"


def _safe_url(url: str) -> str:
    """The URL without any user:password part, for logs."""
    parts = urlsplit(url if "://" in url else "http://" + url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1]))


class StageMetrics:
    """Counters, gauges and histograms of one stage run, delivered on :meth:`flush`."""

    def __init__(
        self,
        stage: str,
        run_id: str | None = None,
        *,
        pushgateway_url: str | None = None,
        metrics_dir: str | os.PathLike | None = None,
        timeout_s: float = 5.0,
    ):
        if not stage or not isinstance(stage, str):
            raise DGError(f"metrics: stage name {stage!r} is empty: expected the stage's name")
        self.stage = stage
        self.run_id = run_id or default_run_id()
        self.task = os.environ.get("DG_TASK", "").strip() or stage
        self.attempt = default_attempt()
        self.pushgateway_url = (
            pushgateway_url if pushgateway_url is not None else os.environ.get("DG_PUSHGATEWAY_URL", "").strip()
        ) or None
        mdir = metrics_dir if metrics_dir is not None else os.environ.get("DG_METRICS_DIR", "").strip()
        self.metrics_dir = Path(mdir) if mdir else None
        self.timeout_s = timeout_s
        self.registry = CollectorRegistry(auto_describe=True)
        self._metrics: dict[str, tuple[str, Any]] = {}
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._last_flush = 0.0

    # -- recording

    def _get(self, kind: str, name: str, buckets: Sequence[float] | None = None) -> Any:
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise DGError(f"metrics: name {name!r} is not valid: expected letters, digits and '_' (not first digit)")
        with self._lock:
            found = self._metrics.get(name)
            if found is not None:
                if found[0] != kind:
                    raise DGError(f"metrics: {name!r} is a {found[0]}, cannot use it as a {kind}")
                return found[1]
            full = PREFIX + name
            doc = f"{self.stage}: {name.replace('_', ' ')}"
            kwargs: dict[str, Any] = {"labelnames": LABELS, "registry": self.registry}
            if kind == "histogram" and buckets is not None:
                kwargs["buckets"] = tuple(buckets)
            try:
                metric = _KINDS[kind](full, doc, **kwargs).labels(**self.grouping_key)
            except ValueError as e:
                raise DGError(f"metrics: cannot create {kind} {name!r}: {e}") from None
            self._metrics[name] = (kind, metric)
            return metric

    def inc(self, name: str, value: float = 1.0) -> None:
        """Add to a counter (exported as ``dguard_<name>_total``); value must be >= 0."""
        if value < 0:
            raise DGError(f"metrics: counter {name!r} cannot decrease (got inc by {value})")
        self._get("counter", name).inc(value)

    def set(self, name: str, value: float) -> None:
        """Set a gauge ``dguard_<name>``."""
        self._get("gauge", name).set(value)

    def observe(self, name: str, value: float, buckets: Sequence[float] | None = None) -> None:
        """Record one observation in a histogram ``dguard_<name>`` (``buckets`` apply on first use)."""
        self._get("histogram", name, buckets).observe(value)

    @contextlib.contextmanager
    def timer(self, name: str) -> Iterator[None]:
        """Observe the seconds the block took in histogram ``name``."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.observe(name, time.perf_counter() - t0)

    # -- delivery

    @property
    def grouping_key(self) -> dict[str, str]:
        """The Pushgateway group (and the labels of every series) of this stage run."""
        return {"run": self.run_id, "stage": self.stage, "task": self.task, "attempt": self.attempt}

    @property
    def textfile(self) -> Path | None:
        if self.metrics_dir is None:
            return None
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{self.task}-{self.run_id}-{self.attempt}")
        return self.metrics_dir / f"{name}.prom"

    def _push(self) -> bool:
        url = self.pushgateway_url
        assert url
        try:
            push_to_gateway(
                url,
                job=JOB,
                registry=self.registry,
                grouping_key=self.grouping_key,
                timeout=self.timeout_s,
                handler=_handler,
            )
            return True
        except Exception as e:  # metrics are never fatal
            reason = " ".join(str(e).split())[:200] or type(e).__name__
            log.warning("metrics: push to %s failed (%s); continuing without it", _safe_url(url), reason)
            return False

    def _write_textfile(self) -> bool:
        path = self.textfile
        assert path is not None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_to_textfile(str(path), self.registry)
            return True
        except Exception as e:  # metrics are never fatal
            log.warning("metrics: cannot write %s (%s); continuing without it", path, e)
            return False

    def flush(self) -> bool:
        """Deliver the current values; True when they reached the Pushgateway or the textfile."""
        self._last_flush = time.monotonic()
        if self.pushgateway_url and self._push():
            return True
        if self.textfile is not None:
            return self._write_textfile()
        return False

    def maybe_flush(self, min_interval_s: float = 15.0) -> bool:
        """Flush if the last flush is older than ``min_interval_s`` (cheap to call every step)."""
        if time.monotonic() - self._last_flush < min_interval_s:
            return False
        return self.flush()

    def close(self, success: bool = True) -> bool:
        """Record the stage's outcome and wall time, flush, and drop the Pushgateway groups past their TTL."""
        self.set("stage_success", 1.0 if success else 0.0)
        self.set("stage_duration_seconds", time.monotonic() - self._started)
        delivered = self.flush()
        if self.pushgateway_url:
            prune(self.pushgateway_url, _ttl_s(), timeout_s=self.timeout_s)
        return delivered

    def __enter__(self) -> StageMetrics:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(success=exc_type is None)


def _handler(url: str, method: str, timeout: float | None, headers: list, data: bytes) -> Any:
    """prometheus_client handler with basic auth from the environment when a user is set."""
    user, password = os.environ.get("DG_PUSHGATEWAY_USER"), os.environ.get("DG_PUSHGATEWAY_PASSWORD")
    if user:
        return basic_auth_handler(url, method, timeout, headers, data, user, password)
    return default_handler(url, method, timeout, headers, data)


def _ttl_s() -> float:
    raw = os.environ.get("DG_PUSHGATEWAY_TTL", "").strip()
    try:
        return float(raw) if raw else DEFAULT_TTL_S
    except ValueError:
        log.warning("metrics: DG_PUSHGATEWAY_TTL=%r is not a number of seconds; using %g", raw, DEFAULT_TTL_S)
        return DEFAULT_TTL_S


def groups(url: str, timeout_s: float = 5.0) -> list[dict[str, Any]]:
    """The Pushgateway's groups of job ``dguard``: [{"labels": {...}, "push_time": unix seconds}]."""
    base = url if "://" in url else "http://" + url
    req = urllib.request.Request(base.rstrip("/") + "/api/v1/metrics")
    user = os.environ.get("DG_PUSHGATEWAY_USER")
    if user:
        token = base64.b64encode(f"{user}:{os.environ.get('DG_PUSHGATEWAY_PASSWORD', '')}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(req, timeout=timeout_s) as r:
        body = json.loads(r.read().decode())
    out = []
    for g in body.get("data") or []:
        labels = dict(g.get("labels") or {})
        if labels.get("job") != JOB:
            continue
        samples = (g.get("push_time_seconds") or {}).get("metrics") or [{}]
        out.append({"labels": labels, "push_time": float(samples[0].get("value") or 0.0)})
    return out


def prune(url: str, ttl_s: float, *, timeout_s: float = 5.0, now: float | None = None) -> list[dict[str, str]]:
    """Delete the ``dguard`` groups last pushed more than ``ttl_s`` ago (0: none); returns their labels.

    Never raises: a Pushgateway that cannot be listed or cleaned is logged and left alone.
    """
    if ttl_s <= 0:
        return []
    now = time.time() if now is None else now
    deleted = []
    try:
        for g in groups(url, timeout_s):
            if now - g["push_time"] <= ttl_s:
                continue
            key = {k: v for k, v in g["labels"].items() if k != "job"}
            delete_from_gateway(url, job=JOB, grouping_key=key, timeout=timeout_s, handler=_handler)
            deleted.append(key)
    except Exception as e:  # metrics are never fatal
        reason = " ".join(str(e).split())[:200] or type(e).__name__
        log.warning("metrics: cannot prune %s (%s); continuing without it", _safe_url(url), reason)
    if deleted:
        log.info("metrics: deleted %d Pushgateway group(s) older than %gs", len(deleted), ttl_s)
    return deleted
