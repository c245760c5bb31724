#!/usr/bin/env bash
# Install the loopback servers the store/metrics contract tests run against, into <repo>/.tools/:
#   - s3rver (npm): an S3-protocol server that enforces credentials (wrong-credential tests)
#   - prometheus-pushgateway (Debian): the real Pushgateway binary the metrics test pushes to
#   - chromium-headless-shell (Debian, apt-get install): the browser the report tests render with
# Idempotent: tools already present at the pinned versions are left alone. Needs node/npm, and apt-get
# (root, or a configured apt cache) for the Debian package. moto[server] comes with the Python test extra.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="${DG_TOOLS_DIR:-$ROOT/.tools}"
S3RVER_VERSION="${S3RVER_VERSION:-3.7.1}"
mkdir -p "$TOOLS"
# apt-get update/install need root: use sudo when not root (apt-get download does not).
SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then SUDO="sudo"; fi

# --- s3rver -------------------------------------------------------------------------------------------
S3RVER_BIN="$TOOLS/node_modules/.bin/s3rver"
have_s3rver() {
  [ -x "$S3RVER_BIN" ] && [ "$(node -p "require('$TOOLS/node_modules/s3rver/package.json').version" 2>/dev/null)" = "$S3RVER_VERSION" ]
}
if have_s3rver; then
  echo "s3rver $S3RVER_VERSION already in $TOOLS"
else
  command -v npm >/dev/null || {
    echo "error: npm not found: s3rver (the S3 server the store tests check credentials against) needs node.js and" \
      "npm; on Debian/Ubuntu: apt-get install nodejs npm" >&2
    exit 1
  }
  [ -f "$TOOLS/package.json" ] || echo '{"name": "dg-test-tools", "private": true}' > "$TOOLS/package.json"
  npm install --prefix "$TOOLS" --no-audit --no-fund --loglevel=error "s3rver@$S3RVER_VERSION"
  have_s3rver || { echo "error: s3rver install failed" >&2; exit 1; }
  echo "installed s3rver $S3RVER_VERSION into $TOOLS"
fi

# --- prometheus-pushgateway ---------------------------------------------------------------------------
PGW_BIN="$TOOLS/pushgateway/usr/bin/prometheus-pushgateway"
if [ -x "$PGW_BIN" ] && "$PGW_BIN" --version >/dev/null 2>&1; then
  echo "prometheus-pushgateway already in $TOOLS/pushgateway"
else
  command -v apt-get >/dev/null || {
    echo "error: apt-get not found: the Pushgateway test binary comes from the Debian package prometheus-pushgateway;" \
      "on another OS put a prometheus-pushgateway binary at $PGW_BIN" >&2
    exit 1
  }
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  if ! (cd "$work" && apt-get download prometheus-pushgateway >/dev/null 2>&1); then
    # A fresh machine may have empty package lists.
    $SUDO apt-get update -qq >/dev/null || { echo "error: 'apt-get update' failed (it needs root or sudo)" >&2; exit 1; }
    (cd "$work" && apt-get download prometheus-pushgateway)
  fi
  rm -rf "$TOOLS/pushgateway"
  dpkg-deb -x "$work"/prometheus-pushgateway_*.deb "$TOOLS/pushgateway"
  "$PGW_BIN" --version >/dev/null 2>&1 || { echo "error: extracted pushgateway does not run" >&2; exit 1; }
  echo "installed $("$PGW_BIN" --version 2>&1 | head -1) into $TOOLS/pushgateway"
fi

# --- headless Chromium (tests/browser.py renders the HTML reports) -------------------------------------
if command -v chromium-headless-shell >/dev/null || command -v chromium >/dev/null; then
  echo "headless Chromium already installed ($(command -v chromium-headless-shell || command -v chromium))"
else
  command -v apt-get >/dev/null || { echo "error: apt-get not found; install chromium-headless-shell (or chromium) yourself" >&2; exit 1; }
  if [ "$(id -u)" != 0 ] && [ -z "$SUDO" ]; then
    echo "error: installing chromium-headless-shell (the browser the report tests use) needs root or sudo" >&2
    exit 1
  fi
  $SUDO apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium-headless-shell >/dev/null \
    || DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null \
    || { echo "error: could not install chromium-headless-shell or chromium with apt-get" >&2; exit 1; }
  echo "installed $(chromium-headless-shell --version 2>/dev/null || chromium --version)"
fi
