"""Artifact store: directories published atomically under a URI, on S3/MinIO or a local directory.

Modules, one idea each: :mod:`~dg_core.store.uri` (the URI grammar), :mod:`~dg_core.store.base` (what a
transport provides), :mod:`~dg_core.store.local` and :mod:`~dg_core.store.s3` (the transports),
:mod:`~dg_core.store.settings` (S3 settings, client, credentials), :mod:`~dg_core.store.manifest` and
:mod:`~dg_core.store.artifact` (the publish / read / fetch protocol), :mod:`~dg_core.store.cache` (downloads),
:mod:`~dg_core.store.plain` (folders without a manifest) and :mod:`~dg_core.store.identity` (the one content
identity). Callers use the names below: ``from dg_core import store; store.fetch(uri)``.

URIs: ``s3://bucket/prefix`` (through the MinIO Python SDK, any S3 endpoint) or ``file:///abs/dir`` (the
embedded default, ``$DG_STORE_ROOT`` or ``file://$PWD/.dg/store``); a plain path means a local directory.

An *artifact* is a directory published with :func:`publish`. Each publish writes an immutable version
(``<uri>/.v/<version>/``: the payload and its ``MANIFEST.json``: sha256 + size of every file, created time,
metadata), then switches the pointer ``<uri>/MANIFEST.json`` to it with a conditional write, so readers see
the old version or the new one, whole, and of two concurrent publishes one wins and the other raises
:class:`PublishConflict`. The guarantees, and which server gives which, are in docs/CONTRACTS.md (Store).
Readers (:func:`read_manifest`, :func:`fetch`) use only the files the manifest lists, check them against it
and refuse incomplete or corrupted artifacts with a one-line :class:`DGError` naming the file and the
expected vs actual size/sha256.

S3 settings come from the environment, under the names KFP and MinIO users already have:

- endpoint: ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` / ``S3_ENDPOINT`` / ``MINIO_ENDPOINT``
  (``http://host:port`` or ``host:port``; without a scheme ``S3_USE_SSL`` decides, default on)
- credentials (``DG_S3_CREDENTIALS``: ``auto``, ``static``, ``iam``, ``anonymous``): static keys
  ``AWS_ACCESS_KEY_ID`` / ``MINIO_ACCESS_KEY``, ``AWS_SECRET_ACCESS_KEY`` / ``MINIO_SECRET_KEY``,
  ``AWS_SESSION_TOKEN``; without them ``auto`` uses the minio SDK's provider chain when Kubernetes or ECS
  injected a role (``AWS_WEB_IDENTITY_TOKEN_FILE`` + ``AWS_ROLE_ARN``: IRSA / workload identity; container
  credentials), ``iam`` also asks the instance metadata service; otherwise requests are anonymous.
  ``AWS_ENDPOINT_URL_STS`` / ``AWS_EC2_METADATA_SERVICE_ENDPOINT`` point those at other endpoints
- ``AWS_REGION`` / ``AWS_DEFAULT_REGION``; ``S3_VERIFY_SSL`` (``0`` disables, a file path is a CA bundle)
- ``DG_S3_CREATE_BUCKET=1`` creates a missing bucket on the first write (reads of it find nothing);
  otherwise a missing bucket is an error
- tuning: ``DG_S3_WORKERS`` (parallel transfers, 8), ``DG_S3_PART_SIZE_MB`` (multipart part size and
  ranged-download chunk, 32; upload memory is about workers x part size), ``DG_S3_RETRIES`` (attempts on
  transient errors, 5), ``DG_S3_BACKOFF_S`` (first backoff, doubling, 0.5), ``DG_S3_LEASE_S`` (a writer
  renews its lease every quarter of this; a version whose lease is older is a dead writer's, swept with its
  unfinished multipart uploads by the next publish of that URI; 120)

Secrets never appear in logs or errors (:func:`dg_core.errors.redact_url`); the access key id is shown
masked. Downloads of s3 artifacts go to ``$DG_CACHE_DIR`` (default ``~/.cache/dguard``) under a key derived
from the manifest; a cached copy is reused only after it verifies by sha256 again.
"""

from dg_core.errors import redact_url
from dg_core.store.artifact import (
    fetch,
    is_published,
    list_artifacts,
    local_payload,
    open_store,
    publish,
    read_manifest,
)
from dg_core.store.base import (
    FORMAT,
    MANIFEST,
    VERSIONS,
    ArtifactBusy,
    ArtifactCorrupt,
    ArtifactNotFound,
    BucketNotFound,
    PublishConflict,
    Store,
)
from dg_core.store.cache import cache_dir
from dg_core.store.identity import PLAIN, content_sha
from dg_core.store.local import LocalStore
from dg_core.store.manifest import build_manifest, files_sha, verify_dir
from dg_core.store.plain import (
    MODEL_MARKER,
    fetch_folder,
    import_dir,
    import_plain,
    is_plain_folder,
    list_model_folders,
    listing_sha,
    snapshot_dir,
)
from dg_core.store.s3 import S3Store
from dg_core.store.settings import S3Settings
from dg_core.store.uri import default_root, is_store_uri, join, output_uri, parse_uri

__all__ = [
    "FORMAT",
    "MANIFEST",
    "MODEL_MARKER",
    "PLAIN",
    "VERSIONS",
    "ArtifactBusy",
    "ArtifactCorrupt",
    "ArtifactNotFound",
    "BucketNotFound",
    "LocalStore",
    "PublishConflict",
    "S3Settings",
    "S3Store",
    "Store",
    "build_manifest",
    "cache_dir",
    "content_sha",
    "default_root",
    "fetch",
    "fetch_folder",
    "files_sha",
    "import_dir",
    "import_plain",
    "is_plain_folder",
    "is_published",
    "is_store_uri",
    "join",
    "output_uri",
    "list_artifacts",
    "list_model_folders",
    "listing_sha",
    "local_payload",
    "open_store",
    "parse_uri",
    "publish",
    "read_manifest",
    "redact_url",
    "snapshot_dir",
    "verify_dir",
]
