"""A newcomer's machine: the Makefile finds a Python 3.11 even when `python3` is another version, and says
exactly what is missing otherwise (scripts/find-python.sh, run for real with controlled PATHs)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIND = ROOT / "scripts" / "find-python.sh"
PY311 = Path(sys.executable).resolve()  # the test runs on 3.11 (requires-python)


def _stub_python(d: Path, version: str) -> Path:
    """An executable named python3 that is another Python: `--version` says ``version``, anything else fails
    (as the 3.11 probe does on a real 3.12)."""
    p = d / "python3"
    p.write_text(f'#!/bin/sh\n[ "$1" = --version ] && {{ echo "Python {version}"; exit 0; }}\nexit 1\n')
    p.chmod(0o755)
    return p


def _find(path: str, home: Path, **env: str) -> subprocess.CompletedProcess[str]:
    e = {"PATH": path, "HOME": str(home), "PYENV_ROOT": str(home / "pyenv"), "DG_PYTHON_LOCATIONS": "", **env}
    return subprocess.run(["/bin/bash", str(FIND)], capture_output=True, text=True, env=e, timeout=60)


def test_python3_of_another_version_is_skipped_for_python311(tmp_path):
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    _stub_python(bin_, "3.12.3")
    (bin_ / "python3.11").symlink_to(PY311)
    r = _find(str(bin_), tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(bin_ / "python3.11")


def test_pyenv_311_is_found_when_nothing_on_path_is(tmp_path):
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    _stub_python(bin_, "3.12.3")
    v = tmp_path / "pyenv" / "versions" / "3.11.9" / "bin"
    v.mkdir(parents=True)
    (v / "python3.11").symlink_to(PY311)
    r = _find(str(bin_), tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == str(v / "python3.11")


def test_no_python311_fails_with_one_message_naming_it(tmp_path):
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    _stub_python(bin_, "3.12.3")
    r = _find(str(bin_), tmp_path)
    assert r.returncode == 1 and r.stdout == ""
    (line,) = r.stderr.strip().splitlines()
    assert "Python 3.11 not found" in line and "python3 is Python 3.12" in line and "python3.11-venv" in line


def test_a_311_without_venv_is_named_with_the_package_to_install(tmp_path):
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    fake = bin_ / "python3.11"  # Debian's python3.11 without python3.11-venv: `import ensurepip` fails
    fake.write_text(f"#!/bin/sh\nexec {PY311} -c \"import sys, builtins; sys.modules['ensurepip'] = None; "
                    f"exec(sys.argv[1]) if len(sys.argv) > 1 else None\" \"$2\"\n")  # fmt: skip
    fake.chmod(0o755)
    r = _find(str(bin_), tmp_path, PYTHON=str(fake))
    assert r.returncode == 1 and r.stdout == ""
    assert "cannot create a venv" in r.stderr and "apt-get install python3.11-venv" in r.stderr


def test_makefile_uses_the_interpreter_it_found(tmp_path):
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    _stub_python(bin_, "3.12.3")
    (bin_ / "python3.11").symlink_to(PY311)
    env = {**os.environ, "PATH": f"{bin_}:{os.environ['PATH']}"}
    env.pop("PYTHON", None)
    r = subprocess.run(["make", "-s", "-C", str(ROOT), "which-python"], capture_output=True, text=True, env=env,
                       timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(bin_ / "python3.11")
