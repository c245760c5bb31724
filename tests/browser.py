"""Render an HTML page in a real headless Chromium (Debian `chromium-headless-shell`) and report what a person
would see broken: images that did not decode, tables without rows, console errors.

A small checker script is put first in <head> (so it sees every later error) and writes its findings into the
DOM on the load event; Chromium dumps the DOM (`--dump-dom`) and its console log goes to stderr
(`--enable-logging=stderr`). No DevTools client is needed. `scripts/install-test-tools.sh` installs Chromium.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

CANDIDATES = ("chromium-headless-shell", "chromium", "chromium-browser")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync")  # fmt: skip

_CHECK = """<script>
window.__errors = [];
window.addEventListener('error', e => window.__errors.push(String(e.message || e.type)), true);
const _ce = console.error; console.error = (...a) => { window.__errors.push(a.join(' ')); _ce(...a); };
window.addEventListener('load', () => {
  const imgs = [...document.images].map(i => ({alt: i.alt, ok: i.complete && i.naturalWidth > 0,
                                                w: i.naturalWidth, h: i.naturalHeight}));
  const tables = [...document.querySelectorAll('table')].map(t => ({
    headers: [...t.querySelectorAll('th')].map(h => h.textContent.trim()),
    rows: [...t.querySelectorAll('tr')].filter(r => r.querySelector('td')).length}));
  const out = document.createElement('pre'); out.id = '__browser_check';
  out.textContent = JSON.stringify({images: imgs, tables: tables, errors: window.__errors,
                                    text: document.body.innerText.slice(0, 4000)});
  document.body.appendChild(out);
});
</script>"""


def chromium() -> str:
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    raise FileNotFoundError(
        "headless Chromium not found (chromium-headless-shell or chromium): run `bash scripts/install-test-tools.sh`"
    )


def render(html: str, timeout_s: float = 60) -> dict:
    """{"images": [...], "tables": [...], "errors": [...], "console": [...], "text": ...} of ``html`` as rendered."""
    page = re.sub(r"<head>", "<head>" + _CHECK, html, count=1)
    assert page != html, "the page has no <head>"
    with tempfile.TemporaryDirectory(prefix="dg-browser-") as tmp:
        path = Path(tmp) / "page.html"
        path.write_text(page, encoding="utf-8")
        argv = [chromium(), *FLAGS, f"--user-data-dir={tmp}/profile", "--enable-logging=stderr", "--v=0",
                "--virtual-time-budget=10000", "--dump-dom", path.as_uri()]  # fmt: skip
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s)
    m = re.search(r'<pre id="__browser_check">(.*?)</pre>', proc.stdout, re.S)
    if m is None:
        raise AssertionError(f"Chromium rendered nothing (exit {proc.returncode}): {proc.stderr[-1500:]}")
    import html as _html

    found = json.loads(_html.unescape(m.group(1)))
    found["console"] = [line for line in proc.stderr.splitlines() if "CONSOLE" in line]
    return found


def problems(found: dict) -> list[str]:
    """What is broken on the page, one line each (empty: nothing)."""
    out = [f"image {i['alt']!r} did not render" for i in found["images"] if not i["ok"]]
    out += [f"table {t['headers'][:3]} has no rows" for t in found["tables"] if t["rows"] == 0]
    out += [f"table with {t['rows']} rows has no header" for t in found["tables"] if not t["headers"]]
    out += [f"script error: {e}" for e in found["errors"]]
    out += [f"console: {c}" for c in found["console"]]
    return out
