"""The container images: both Dockerfiles install exactly the lock file's versions, run as uid 1000 with the
`dguard` entry point, and send a build context that really builds the package.

No Docker daemon runs here, so the Dockerfiles are parsed (continuations, ARG defaults, stages) and the one
step that can run without Docker, `pip install .` on the filtered build context, is run as a wheel build.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "images"
FLAVOURS = ("cpu", "cuda")
EXPECTED_UID = 1000


# ------------------------------------------------------------------------------------------------ parsing


@dataclass
class Instr:
    op: str
    arg: str


@dataclass
class Stage:
    base: str
    name: str | None
    instrs: list[Instr] = field(default_factory=list)

    def all(self, op: str) -> list[str]:
        return [i.arg for i in self.instrs if i.op == op]


def read_instructions(path: Path) -> list[Instr]:
    """Dockerfile instructions with continuation lines joined and comment lines dropped (as Docker does)."""
    out: list[Instr] = []
    buf = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):  # comments inside a continued instruction are removed
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        op, _, arg = buf.strip().partition(" ")
        out.append(Instr(op.upper(), arg.strip()))
        buf = ""
    assert not buf, f"{path.name}: dangling line continuation"
    return out


def parse_env(arg: str) -> dict[str, str]:
    """`ENV A=1 B=2` (or the legacy `ENV A 1`) as a dict."""
    parts = shlex.split(arg)
    if parts and "=" not in parts[0]:
        return {parts[0]: " ".join(parts[1:])}
    return dict(p.split("=", 1) for p in parts)


def expand(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), text)


def stages(path: Path) -> list[Stage]:
    """The build stages, with global ARG defaults substituted into FROM and stage ARGs into RUN lines."""
    global_args: dict[str, str] = {}
    out: list[Stage] = []
    for ins in read_instructions(path):
        if ins.op == "ARG" and not out:
            k, _, v = ins.arg.partition("=")
            global_args[k] = v
        elif ins.op == "FROM":
            words = expand(ins.arg, global_args).split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            out.append(Stage(words[0], name))
        else:
            assert out, f"{path.name}: {ins.op} before FROM"
            out[-1].instrs.append(ins)
    for st in out:
        stage_args = {}
        for ins in st.instrs:
            if ins.op == "ARG":
                k, _, v = ins.arg.partition("=")
                stage_args[k] = v
            elif ins.op == "RUN":
                ins.arg = expand(ins.arg, stage_args)
    return out


@dataclass
class PipInstall:
    constraints: list[str]
    index_url: str | None
    requirements: list[str]
    options: list[str]


_PIP_VALUE_OPTS = {
    "-c": "constraint",
    "--constraint": "constraint",
    "-i": "index",
    "--index-url": "index",
    "--extra-index-url": "extra",
    "-r": "requirement",
    "--requirement": "requirement",
    "-f": "find-links",
    "--find-links": "find-links",
    "-t": "target",
    "--target": "target",
}


def pip_installs(run: str) -> list[PipInstall]:
    """Every `pip install` in one RUN line (split on && ; ||), with its constraints, index and requirements."""
    found = []
    for cmd in re.split(r"&&|\|\||;", run):
        words = shlex.split(cmd)
        try:
            i = words.index("install")
        except ValueError:
            continue
        if not any(w in ("pip", "pip3") or w.endswith("/pip") for w in words[:i]) and "pip" not in words[:i]:
            continue
        pi = PipInstall([], None, [], [])
        rest = iter(words[i + 1 :])
        for w in rest:
            if w in _PIP_VALUE_OPTS:
                value = next(rest)
                kind = _PIP_VALUE_OPTS[w]
                if kind == "constraint":
                    pi.constraints.append(value)
                elif kind == "index":
                    pi.index_url = value
                else:
                    pi.options.append(f"{w} {value}")
            elif w.startswith("-"):
                pi.options.append(w)
            else:
                pi.requirements.append(w)
        found.append(pi)
    return found


def read_lock() -> dict[str, str]:
    lock = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not pinned with =="
            lock[canonicalize_name(name)] = version
    return lock


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def final_stage(flavour: str) -> Stage:
    return stages(IMAGES / f"Dockerfile.{flavour}")[-1]


def all_pip_installs(flavour: str) -> list[tuple[Stage, PipInstall]]:
    return [
        (st, pi) for st in stages(IMAGES / f"Dockerfile.{flavour}") for run in st.all("RUN") for pi in pip_installs(run)
    ]


# -------------------------------------------------------------------------------------------- the lock


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_every_pip_install_is_constrained_by_the_lock(flavour: str) -> None:
    installs = all_pip_installs(flavour)
    assert len(installs) >= 2, "expected torch and the package to be installed with pip"
    for _, pi in installs:
        assert pi.constraints == ["constraints.txt"], f"{flavour}: pip install without -c constraints.txt: {pi}"
        assert not any(o.startswith(("-r ", "--requirement ", "--extra-index-url ")) for o in pi.options), (
            f"{flavour}: requirement files or extra indexes would bypass the lock check: {pi.options}"
        )
    # the lock is in the build stage before the first install reads it
    build = installs[0][0]
    ops = [(i.op, i.arg) for i in build.instrs]
    first_pip = next(n for n, (op, arg) in enumerate(ops) if op == "RUN" and pip_installs(arg))
    copies = [arg.split() for op, arg in ops[:first_pip] if op == "COPY"]
    assert any("constraints.txt" in c[:-1] for c in copies), f"{flavour}: constraints.txt not copied before pip"


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_pinned_packages_match_the_lock(flavour: str) -> None:
    lock = read_lock()
    pinned = 0
    for _, pi in all_pip_installs(flavour):
        for req in pi.requirements:
            if req == ".":
                continue
            r = Requirement(req)
            name = canonicalize_name(r.name)
            specs = list(r.specifier)
            assert len(specs) == 1 and specs[0].operator == "==", f"{flavour}: {req!r} is not pinned with =="
            assert name in lock, f"{flavour}: {req!r} installs a package the lock does not pin"
            assert Version(specs[0].version) == Version(lock[name]), (
                f"{flavour}: {req!r} but constraints.txt pins {name}=={lock[name]}"
            )
            pinned += 1
    assert pinned >= 1, f"{flavour}: torch should be pinned explicitly (it comes from a separate index)"


def test_torch_index_is_the_only_difference_between_cpu_and_cuda() -> None:
    def shape(flavour: str) -> list[tuple[str, str]]:
        out = []
        for st in stages(IMAGES / f"Dockerfile.{flavour}"):
            out.append(("FROM", st.base))
            for i in st.instrs:
                if i.op == "LABEL" or (i.op == "ARG" and i.arg.startswith("TORCH_INDEX_URL=")):
                    continue
                if i.op == "RUN":
                    arg = re.sub(r"--index-url \S+", "--index-url INDEX", i.arg)
                elif i.op == "ENV":
                    env = {k: v for k, v in parse_env(i.arg).items() if not k.startswith("NVIDIA_")}
                    arg = json.dumps(env, sort_keys=True)
                else:
                    arg = i.arg
                out.append((i.op, arg))
        return out

    assert shape("cpu") == shape("cuda")
    (cpu_torch,) = [pi.index_url for _, pi in all_pip_installs("cpu") if pi.index_url]
    (cuda_torch,) = [pi.index_url for _, pi in all_pip_installs("cuda") if pi.index_url]
    assert cpu_torch.rstrip("/").endswith("/whl/cpu"), cpu_torch
    assert re.search(r"/whl/cu\d{3}/?$", cuda_torch), cuda_torch
    nvidia = parse_env(" ".join(a for a in final_stage("cuda").all("ENV")))
    assert {"NVIDIA_VISIBLE_DEVICES", "NVIDIA_DRIVER_CAPABILITIES"} <= set(nvidia)


def test_lock_pins_the_whole_runtime_closure() -> None:
    """`-c constraints.txt` fixes every version in the image only if the lock pins every runtime dependency."""
    lock = read_lock()
    tooling = {"pip", "setuptools", "wheel"}  # come with the base image's venv, not from the lock
    seen: set[str] = set()
    todo = ["distillation-guards"]
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        for spec in md.distribution(name).requires or []:
            r = Requirement(spec)
            if r.marker is None or r.marker.evaluate({"extra": ""}):
                todo.append(r.name)
    seen.discard("distillation-guards")
    assert len(seen) > 20, "the dependency walk found suspiciously few packages"
    unpinned = sorted(seen - set(lock) - tooling)
    assert not unpinned, f"runtime dependencies missing from constraints.txt: {unpinned}"
    for name in sorted(seen & set(lock)):
        installed = Version(md.version(name)).public  # torch here is 2.13.0+cpu: the local label is the wheel build
        assert Version(installed) == Version(lock[name]), f"{name}: venv has {installed}, lock pins {lock[name]}"


# ----------------------------------------------------------------------------------------- the runtime


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_runs_as_uid_1000_not_root(flavour: str) -> None:
    st = final_stage(flavour)
    users = st.all("USER")
    assert users, f"{flavour}: the final stage never sets USER, so it runs as root"
    user = users[-1].split(":")
    # numeric, so Kubernetes can verify runAsNonRoot without looking inside the image
    assert user[0].isdigit() and int(user[0]) == EXPECTED_UID, f"{flavour}: USER {users[-1]!r}"
    runs = " ".join(st.all("RUN"))
    assert re.search(rf"useradd\b.*--uid {EXPECTED_UID}\b", runs), f"{flavour}: no user with uid {EXPECTED_UID}"


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_entrypoint_is_the_dguard_console_script(flavour: str) -> None:
    st = final_stage(flavour)
    entry = st.all("ENTRYPOINT")
    assert entry, f"{flavour}: no ENTRYPOINT"
    assert json.loads(entry[-1]) == ["dguard"], f"{flavour}: ENTRYPOINT {entry[-1]} (exec form ['dguard'] expected)"
    assert "dguard" in pyproject()["project"]["scripts"], "pyproject.toml no longer provides the dguard script"
    env = parse_env(" ".join(st.all("ENV")))
    assert "/opt/dguard/bin" in env["PATH"].split(":"), "dguard is installed in /opt/dguard but not on PATH"
    assert any("--from=build /opt/dguard /opt/dguard" in c for c in st.all("COPY"))


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_workdir_and_caches_are_writable_and_hub_not_forced_offline(flavour: str) -> None:
    st = final_stage(flavour)
    env = parse_env(" ".join(st.all("ENV")))
    workdir = st.all("WORKDIR")[-1]
    runs = " ".join(st.all("RUN"))
    m = re.search(rf"chown -R {EXPECTED_UID}:\S+ ([^&]+)", runs)
    assert m, f"{flavour}: nothing is chowned to uid {EXPECTED_UID}"
    owned = m.group(1).split()
    for path in (workdir, env["HOME"], env["HF_HOME"], env["DG_CACHE_DIR"], env["MPLCONFIGDIR"]):
        assert any(path == o or path.startswith(o.rstrip("/") + "/") for o in owned), (
            f"{flavour}: {path} is not under a directory owned by uid {EXPECTED_UID} ({owned})"
        )
    for forced in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        assert forced not in env, f"{flavour}: the image must not force {forced}"
    # both stages on the same base, or the venv's interpreter path breaks after COPY --from=build
    bases = {s.base for s in stages(IMAGES / f"Dockerfile.{flavour}")}
    assert len(bases) == 1 and "python:3.11" in bases.pop()


# --------------------------------------------------------------------------------------- build context


def _ignore_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regex over slash paths (Go filepath.Match plus `**`)."""
    out = ""
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            out += ".*"
            i += 2
            if i < len(pattern) and pattern[i] == "/":
                out = out[:-2] + "(.*/)?"
                i += 1
            continue
        out += {"*": "[^/]*", "?": "[^/]"}.get(c, re.escape(c))
        i += 1
    return re.compile(out + r"\Z")


def context_files(ignore_file: Path) -> set[str]:
    """The files `docker build .` sends with this ignore file: last matching pattern wins, parents count."""
    rules = []
    negations: list[str] = []
    for line in ignore_file.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        neg = line.startswith("!")
        pat = (line[1:].strip() if neg else line).strip("/")
        rules.append((neg, _ignore_regex(pat)))
        if neg:
            negations.append(pat)

    def excluded(rel: str) -> bool:
        parts = rel.split("/")
        candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        state = False
        for neg, rx in rules:
            if any(rx.match(c) for c in candidates):
                state = not neg
        return state

    def may_reinclude_below(rel_dir: str) -> bool:
        return any(n.startswith(("*", "?", "[")) or n.startswith(rel_dir + "/") for n in negations)

    files = set()
    for dirpath, dirnames, filenames in os.walk(ROOT):
        base = Path(dirpath).relative_to(ROOT).as_posix()
        prefix = "" if base == "." else base + "/"
        # an excluded directory no exception reaches into is skipped whole (.venv, .git: fast and exact)
        dirnames[:] = [d for d in dirnames if not excluded(prefix + d) or may_reinclude_below(prefix + d)]
        for f in filenames:
            rel = prefix + f
            if not os.path.islink(ROOT / rel) and not excluded(rel):
                files.add(rel)
    return files


@pytest.fixture(scope="module")
def contexts() -> dict[str, set[str]]:
    return {f: context_files(IMAGES / f"Dockerfile.{f}.dockerignore") for f in FLAVOURS}


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_build_context_has_what_copy_needs_and_nothing_heavy(flavour: str, contexts: dict[str, set[str]]) -> None:
    ctx = contexts[flavour]
    copies = [c.split() for st in stages(IMAGES / f"Dockerfile.{flavour}") for c in st.all("COPY")]
    sources = [s for c in copies if not c[0].startswith("--from") for s in c[:-1]]
    assert sources, "no COPY from the context"
    for src in sources:
        assert src in ctx or any(f.startswith(src.rstrip("/") + "/") for f in ctx), (
            f"{flavour}: COPY {src} but the .dockerignore leaves it out of the context"
        )
    project = pyproject()
    assert project["project"]["readme"] in sources, "pyproject's readme is needed by `pip install .`"
    for pkg in project["tool"]["setuptools"]["packages"]["find"]["include"]:
        top = pkg.rstrip("*")
        assert top in sources, f"{flavour}: package {top} (pyproject) is not copied into the image"
    heavy = [f for f in ctx if f.split("/")[0] in {".venv", ".git", ".tools", ".dg", "tests", "bench", "charts"}]
    assert not heavy, f"{flavour}: the context would carry {heavy[:5]}"
    assert not [f for f in ctx if "__pycache__" in f or f.endswith(".pyc")]


def test_build_context_builds_the_package(tmp_path: Path, contexts: dict[str, set[str]]) -> None:
    """What the image's `pip install -c constraints.txt .` gets: the filtered context builds a wheel that carries
    the dguard entry point, every stage module and the compiled pipelines `dguard upload --all` submits."""
    ctx = contexts["cpu"]
    assert ctx == contexts["cuda"], "the two images should send the same context"
    src = tmp_path / "context"
    for rel in ctx:
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, src / rel)
    # the build must not depend on an egg-info or build dir left in the checkout
    shutil.rmtree(src / "distillation_guards.egg-info", ignore_errors=True)
    out = tmp_path / "wheel"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"pip wheel on the image's build context failed:\n{proc.stderr[-3000:]}"
    (whl,) = out.glob("distillation_guards-*.whl")
    with zipfile.ZipFile(whl) as z:
        names = set(z.namelist())
        (ep,) = [n for n in names if n.endswith("entry_points.txt")]
        entry_points = z.read(ep).decode()
    assert re.search(r"^dguard\s*=\s*dg_core\.cli:main$", entry_points, re.M), entry_points
    for rel in sorted(ctx):
        if rel.endswith(".py") and rel.split("/")[0] in ("dg_core", "components", "pipelines"):
            assert rel in names, f"{rel} is in the context but not in the wheel the image installs"
    compiled = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "pipelines" / "compiled").glob("*.yaml"))
    missing = [c for c in compiled if c not in names]
    assert not missing, f"compiled pipelines missing from the wheel (dguard upload --all needs them): {missing}"


def test_make_images_builds_both_with_the_charts_tag() -> None:
    if shutil.which("make") is None:
        pytest.fail("make not found: install make (Debian package 'make') to run this test")
    proc = subprocess.run(["make", "-n", "images", "DOCKER=docker"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    builds = [shlex.split(line.split("docker ", 1)[1]) for line in proc.stdout.splitlines() if "docker build " in line]
    assert len(builds) == 2, proc.stdout
    version = pyproject()["project"]["version"]
    chart = (ROOT / "charts" / "distillation-guards" / "Chart.yaml").read_text()
    app_version = re.search(r'^appVersion:\s*"?([^"\s]+)"?', chart, re.M).group(1)
    assert app_version == version, "the chart's default image tag (appVersion) must be the package version"
    tags = {}
    for b in builds:
        assert b[0] == "build" and b[-1] == ".", f"build from the repository root: {b}"
        dockerfile = b[b.index("-f") + 1]
        tags[dockerfile] = b[b.index("-t") + 1]
    assert tags == {
        "images/Dockerfile.cpu": f"ghcr.io/distillation-guards/dguard:{version}",
        "images/Dockerfile.cuda": f"ghcr.io/distillation-guards/dguard:{version}-cuda",
    }


def test_base_image_is_pinned_by_digest_and_the_same_in_both() -> None:
    """A tag moves; the digest does not. Both images start from one base (tag kept for people)."""
    bases = {}
    for flavour in FLAVOURS:
        text = (IMAGES / f"Dockerfile.{flavour}").read_text()
        (arg,) = re.findall(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M)
        assert re.fullmatch(r"python:3\.11-slim-bookworm@sha256:[0-9a-f]{64}", arg), arg
        assert all(line.split()[1] == "${PYTHON_IMAGE}" for line in text.splitlines() if line.startswith("FROM ")), (
            flavour
        )
        bases[flavour] = arg
    assert bases["cpu"] == bases["cuda"]
    readme = (IMAGES / "README.md").read_text()
    assert "pinned by digest" in readme and "not been pulled or verified" in readme


def test_comments_name_the_torch_build_of_their_image() -> None:
    assert "+cpu" not in (IMAGES / "Dockerfile.cuda").read_text()
    assert "2.13.0+cu130 satisfies" in (IMAGES / "Dockerfile.cuda").read_text()


def test_expected_image_sizes_are_documented() -> None:
    readme = (IMAGES / "README.md").read_text()
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| (CPU|CUDA) \| about ([\d.]+ GB) \|", readme, re.M)}
    assert set(rows) == {"CPU", "CUDA"}, rows
