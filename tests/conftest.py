"""Shared fixtures. Tests run offline; servers they need start on loopback (see tests/servers.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Ambient settings that would point tests at a real store or metrics endpoint.
_STORE_ENV = (
    "AWS_ENDPOINT_URL_S3",
    "AWS_ENDPOINT_URL",
    "S3_ENDPOINT",
    "MINIO_ENDPOINT",
    "AWS_ACCESS_KEY_ID",
    "MINIO_ACCESS_KEY",
    "AWS_SECRET_ACCESS_KEY",
    "MINIO_SECRET_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "S3_USE_SSL",
    "S3_VERIFY_SSL",
    "DG_S3_CREATE_BUCKET",
    "DG_S3_WORKERS",
    "DG_S3_PART_SIZE_MB",
    "DG_S3_RETRIES",
    "DG_S3_BACKOFF_S",
    "DG_S3_LEASE_S",
    "DG_S3_CREDENTIALS",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
    "AWS_ROLE_SESSION_NAME",
    "AWS_ENDPOINT_URL_STS",
    "AWS_EC2_METADATA_SERVICE_ENDPOINT",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    "DG_STORE_ROOT",
    "DG_CACHE_DIR",
    "DG_PUSHGATEWAY_URL",
    "DG_METRICS_DIR",
)


# ---------------------------------------------------------------------------------------------- servers


@pytest.fixture(scope="session")
def moto() -> Iterator:
    """A moto S3 server on loopback for the whole session."""
    from servers import moto_server

    with moto_server() as s:
        yield s


@pytest.fixture(scope="session")
def moto_iam() -> Iterator:
    """A moto S3 server enforcing IAM, with an admin and a read-only user (see servers.IamMoto)."""
    from servers import moto_iam_server

    with moto_iam_server() as s:
        yield s


@pytest.fixture(scope="session")
def s3rver() -> Iterator:
    """An s3rver S3 server (checks access key ids) on loopback for the whole session."""
    from servers import s3rver_server

    with s3rver_server() as s:
        yield s


@pytest.fixture(scope="session")
def s3rver_tls() -> Iterator:
    """s3rver over https with a self-signed certificate (``.cert``)."""
    from servers import s3rver_server

    with s3rver_server(tls=True) as s:
        yield s


@pytest.fixture(scope="session")
def pushgateway() -> Iterator:
    """A real prometheus-pushgateway on loopback for the whole session."""
    from servers import pushgateway_server

    with pushgateway_server() as s:
        yield s


# ---------------------------------------------------------------------------------------------- stores


@pytest.fixture(scope="session", autouse=True)
def _no_default_store_in_the_checkout(tmp_path_factory) -> Iterator[None]:
    """A test that names no store would publish into ``./.dg/store`` of the checkout: point the default elsewhere."""
    if os.environ.get("DG_STORE_ROOT"):
        yield
        return
    os.environ["DG_STORE_ROOT"] = tmp_path_factory.mktemp("default-store").as_uri()
    try:
        yield
    finally:
        os.environ.pop("DG_STORE_ROOT", None)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path) -> pytest.MonkeyPatch:
    """No ambient store/metrics settings; the download cache is private to the test."""
    for name in _STORE_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DG_CACHE_DIR", str(tmp_path / "cache"))
    return monkeypatch


@pytest.fixture(scope="module")
def zoo_root(tmp_path_factory) -> Iterator[str]:
    """A private store and download cache for one module, so the zoo models it builds are built once."""
    root = tmp_path_factory.mktemp("store").as_uri()
    mp = pytest.MonkeyPatch()
    mp.setenv("DG_STORE_ROOT", root)
    mp.setenv("DG_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    yield root
    mp.undo()


@pytest.fixture
def store_root(clean_env, tmp_path) -> str:
    """A private local store (file://) as DG_STORE_ROOT."""
    root = (tmp_path / "store").as_uri()
    clean_env.setenv("DG_STORE_ROOT", root)
    return root


@pytest.fixture
def s3_store_root(clean_env, moto) -> str:
    """A fresh bucket on the session's moto server as DG_STORE_ROOT (s3://...)."""
    from servers import use_s3

    root = use_s3(clean_env, moto)
    clean_env.setenv("DG_STORE_ROOT", root)
    return root
