"""S3 connection settings from the environment (the names KFP and MinIO users already have), and the one
MinIO client per setting: TLS, connection pool, and the SDK's credential providers (IRSA / web identity,
container and instance credentials, refreshed by the SDK). Which errors are transient is decided here too.
The variables and their defaults are listed in the package docstring (:mod:`dg_core.store`)."""

from __future__ import annotations

import dataclasses
import http.client
import logging
import os
import re
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from dg_core.errors import DGError, redact_url

log = logging.getLogger("dg_core.store")


def env_workers() -> int:
    return env_int("DG_S3_WORKERS", 8, lo=1, hi=64)


def env_int(name: str, default: int, *, lo: int, hi: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        v = int(raw)
    except ValueError:
        raise DGError(f"environment variable {name}={raw!r} is not an integer (expected {lo}..{hi})") from None
    if not lo <= v <= hi:
        raise DGError(f"environment variable {name}={v} is out of range (expected {lo}..{hi})")
    return v


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        v = float(raw)
    except ValueError:
        raise DGError(f"environment variable {name}={raw!r} is not a number") from None
    if v < 0:
        raise DGError(f"environment variable {name}={v} must be >= 0")
    return v


def env_flag(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise DGError(f"environment variable {name}={raw!r} is not a boolean (expected 1/0, true/false, yes/no)")


@dataclasses.dataclass(frozen=True)
class S3Settings:
    """Connection settings read from the environment; secrets are excluded from repr."""

    endpoint: str
    secure: bool
    region: str | None
    access_key: str | None = dataclasses.field(repr=False)
    secret_key: str | None = dataclasses.field(repr=False)
    session_token: str | None = dataclasses.field(repr=False)
    verify: bool | str
    create_bucket: bool
    workers: int
    part_size: int
    retries: int
    backoff_s: float
    lease_s: int = 120
    credentials: str = "static"  # static | anonymous | iam (see _IAM_SIGNALS)
    iam_endpoint: str | None = None  # the STS (web identity) or instance-metadata URL, when not the default

    @property
    def url(self) -> str:
        return ("https://" if self.secure else "http://") + self.endpoint

    @property
    def masked_key(self) -> str:
        if self.credentials == "iam":
            return "(from the IAM provider chain)"
        k = self.access_key or ""
        return (k[:4] + "***") if k else "(anonymous)"

    @classmethod
    def from_env(cls) -> S3Settings:
        env = os.environ
        raw = next(
            (
                env[n].strip()
                for n in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "S3_ENDPOINT", "MINIO_ENDPOINT")
                if env.get(n, "").strip()
            ),
            "s3.amazonaws.com",
        )
        shown = redact_url(raw)
        if "://" in raw:
            parts = urlsplit(raw)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise DGError(f"S3 endpoint {shown!r} is not valid: expected http(s)://host[:port] or host[:port]")
            if parts.path.strip("/"):
                raise DGError(f"S3 endpoint {shown!r} has a path: expected http(s)://host[:port] without a path")
            secure = parts.scheme == "https"
            endpoint = parts.netloc
        else:
            endpoint = raw.rstrip("/")
            secure = env_flag("S3_USE_SSL", True)
        if "@" in endpoint:
            raise DGError(
                f"S3 endpoint {shown!r} holds credentials: put them in AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
                "(or MINIO_ACCESS_KEY/MINIO_SECRET_KEY) and give the endpoint as http(s)://host[:port]"
            )
        access = env.get("AWS_ACCESS_KEY_ID") or env.get("MINIO_ACCESS_KEY") or None
        secret = env.get("AWS_SECRET_ACCESS_KEY") or env.get("MINIO_SECRET_KEY") or None
        if bool(access) != bool(secret):
            missing = "secret key (AWS_SECRET_ACCESS_KEY)" if access else "access key id (AWS_ACCESS_KEY_ID)"
            raise DGError(f"S3 credentials are incomplete: the {missing} is not set")
        mode = env.get("DG_S3_CREDENTIALS", "").strip().lower() or "auto"
        if mode not in ("auto", "static", "iam", "anonymous"):
            raise DGError(f"DG_S3_CREDENTIALS={mode!r}: expected auto, static, iam or anonymous")
        if mode == "auto":
            mode = "static" if access else ("iam" if any(env.get(n) for n in _IAM_SIGNALS) else "anonymous")
        if mode == "static" and not access:
            raise DGError("DG_S3_CREDENTIALS=static but AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY are not set")
        if mode == "anonymous":
            access = secret = None
        token_file = env.get("AWS_WEB_IDENTITY_TOKEN_FILE", "").strip()
        if mode == "iam" and token_file and not Path(token_file).is_file():
            raise DGError(f"AWS_WEB_IDENTITY_TOKEN_FILE={token_file!r} does not exist: expected the projected token")
        iam_endpoint = (
            env.get("AWS_ENDPOINT_URL_STS" if token_file else "AWS_EC2_METADATA_SERVICE_ENDPOINT", "").strip() or None
        )
        verify_raw = env.get("S3_VERIFY_SSL", "").strip()
        verify: bool | str
        if not verify_raw or verify_raw.lower() in ("1", "true", "yes", "on"):
            verify = True
        elif verify_raw.lower() in ("0", "false", "no", "off"):
            verify = False
        elif Path(verify_raw).is_file():
            verify = verify_raw
        else:
            raise DGError(f"S3_VERIFY_SSL={verify_raw!r}: expected 1/0 or the path of an existing CA bundle file")
        return cls(
            endpoint=endpoint,
            secure=secure,
            region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or env.get("MINIO_REGION") or None,
            access_key=access,
            secret_key=secret,
            session_token=env.get("AWS_SESSION_TOKEN") or None,
            verify=verify,
            create_bucket=env_flag("DG_S3_CREATE_BUCKET", False),
            workers=env_workers(),
            part_size=env_int("DG_S3_PART_SIZE_MB", 32, lo=5, hi=5120) << 20,
            retries=env_int("DG_S3_RETRIES", 5, lo=1, hi=50),
            backoff_s=env_float("DG_S3_BACKOFF_S", 0.5),
            lease_s=env_int("DG_S3_LEASE_S", 120, lo=1, hi=86400),
            credentials=mode,
            iam_endpoint=iam_endpoint if mode == "iam" else None,
        )


# Any of these set (IRSA / workload identity / ECS task roles) makes ``auto`` use the IAM provider chain.
# Instance metadata alone is not probed unless DG_S3_CREDENTIALS=iam: off a cloud VM it only hangs.
# Any of these set (IRSA / workload identity / ECS task roles) makes ``auto`` use the IAM provider chain.
# Instance metadata alone is not probed unless DG_S3_CREDENTIALS=iam: off a cloud VM it only hangs.
_IAM_SIGNALS = (
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
)


def _credential_provider(s: S3Settings):
    """The minio SDK's chain: keys in the environment (AWS_*, MINIO_*), then the IAM provider (web identity
    via AWS_WEB_IDENTITY_TOKEN_FILE + AWS_ROLE_ARN, ECS container credentials, EC2 instance metadata).
    Temporary credentials are refreshed by the SDK before they expire."""
    from minio.credentials.providers import ChainedProvider, EnvAWSProvider, EnvMinioProvider, IamAwsProvider

    return ChainedProvider([EnvAWSProvider(), EnvMinioProvider(), IamAwsProvider(custom_endpoint=s.iam_endpoint)])


def _check_credentials(provider: Any, s: S3Settings) -> None:
    """Fetch credentials once up front, so a missing role is one clear line, not a failure per request."""
    from minio.credentials.providers import IamAwsProvider

    try:
        provider.retrieve()
    except Exception:
        try:  # the chain hides why; ask its last member, the one that was expected to answer
            IamAwsProvider(custom_endpoint=s.iam_endpoint).retrieve()
            reason = "no provider answered"
        except Exception as e:
            reason = short_error(e)
        via = (
            "web identity (AWS_WEB_IDENTITY_TOKEN_FILE)"
            if os.environ.get("AWS_WEB_IDENTITY_TOKEN_FILE")
            else ("container or instance metadata")
        )
        raise DGError(
            f"S3 credentials: none found for {s.url} (no AWS_ACCESS_KEY_ID; {via} failed: {reason}); set keys, "
            "or check the pod's service account / the instance role"
        ) from None


_CLIENTS: dict[S3Settings, Any] = {}
BUCKETS_OK: set[tuple[S3Settings, str]] = set()  # checked once per process (S3Store.ensure_bucket)
_LOCK = threading.Lock()

AUTH_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken", "InvalidSecurity"}
_TRANSIENT_CODES = {
    "SlowDown",
    "InternalError",
    "ServiceUnavailable",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "OperationAborted",
    "XMinioServerNotInitialized",
}


def client_for(s: S3Settings):
    with _LOCK:
        c = _CLIENTS.get(s)
        if c is None:
            import certifi
            import urllib3
            from minio import Minio

            ca = s.verify if isinstance(s.verify, str) else (os.environ.get("SSL_CERT_FILE") or certifi.where())
            http = urllib3.PoolManager(
                timeout=urllib3.Timeout(connect=10, read=120),
                maxsize=s.workers * 4 + 4,
                cert_reqs="CERT_REQUIRED" if s.verify else "CERT_NONE",
                ca_certs=ca,
                retries=False,  # retries live in S3Store._call, with backoff and error mapping
            )
            provider = None
            if s.credentials == "iam":
                provider = _credential_provider(s)
                _check_credentials(provider, s)
            c = Minio(
                s.endpoint,
                access_key=s.access_key if provider is None else None,
                secret_key=s.secret_key if provider is None else None,
                session_token=s.session_token if provider is None else None,
                secure=s.secure,
                region=s.region,
                http_client=http,
                credentials=provider,
            )
            if not s.verify and s.secure:
                import warnings

                # The user opted out (S3_VERIFY_SSL=0): say so once instead of once per request.
                warnings.filterwarnings("ignore", category=urllib3.exceptions.InsecureRequestWarning)
                log.warning("S3_VERIFY_SSL=0: TLS certificates of %s are not verified", s.url)
            _CLIENTS[s] = c
        return c


def is_tls_error(exc: BaseException) -> bool:
    import ssl

    import urllib3

    reason = getattr(exc, "reason", None)
    return isinstance(exc, urllib3.exceptions.SSLError | ssl.SSLError) or isinstance(
        reason, urllib3.exceptions.SSLError | ssl.SSLError
    )


def is_transient(exc: BaseException) -> bool:
    import urllib3
    from minio.error import InvalidResponseError, S3Error, ServerError

    if is_tls_error(exc):
        return False  # a certificate problem does not go away by retrying
    if isinstance(exc, S3Error):
        status = getattr(exc.response, "status", 0) or 0
        return exc.code in _TRANSIENT_CODES or status >= 500 or status == 429
    if isinstance(exc, ServerError):
        return exc.status_code >= 500 or exc.status_code == 429
    if isinstance(exc, InvalidResponseError):
        code = getattr(exc, "_code", 0) or 0
        return code >= 500 or code == 429
    return isinstance(exc, urllib3.exceptions.HTTPError | ConnectionError | TimeoutError | http.client.HTTPException)


def short_error(exc: BaseException) -> str:
    """A one-line reason for an SDK/HTTP error (S3 code and message, or the exception text)."""
    code, message = getattr(exc, "code", None), getattr(exc, "message", None)
    if isinstance(code, str) and code:
        return f"{code}: {message}" if message else code
    text = " ".join(str(exc).split())
    text = redact_url(re.sub(r"<[^>]*object at 0x[0-9a-f]+>:?\s*", "", text))
    return (text[:200] + "...") if len(text) > 200 else (text or type(exc).__name__)
