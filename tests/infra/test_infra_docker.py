"""The container image (infra/docker). No Docker engine here, so: the Dockerfile's structure, the
lock file against the project's pins, and the project installed from exactly the files the
Dockerfile copies (a wheel built from them must hold every data file the code reads)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import infra_checks as ic
import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

DOCKER = ic.REPO / "infra" / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
LOCK = DOCKER / "requirements.lock"
AWS_KEY_ID = re.compile(r"\b(AKIA|ASIA)[A-Z0-9]{16}\b")


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile: comments dropped, continuation lines joined."""
    result, pending = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        text = pending + stripped
        pending = ""
        keyword, _, arguments = text.partition(" ")
        result.append((keyword.upper(), arguments.strip()))
    assert not pending, f"{path}: ends in a continuation line"
    return result


def copy_sources() -> list[str]:
    sources = []
    for keyword, arguments in instructions(DOCKERFILE):
        if keyword in ("COPY", "ADD"):
            parts = [p for p in arguments.split() if not p.startswith("--")]
            sources += parts[:-1]
    return sources


def lock_pins() -> dict[str, Version]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        if line and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep and version, f"requirements.lock: {line!r} is not NAME==VERSION"
            pins[canonicalize_name(name)] = Version(version)
    return pins


def test_the_base_image_is_pinned_and_matches_the_project_python():
    froms = [args.split()[0] for keyword, args in instructions(DOCKERFILE) if keyword == "FROM"]
    assert froms
    requires = tomllib.loads((ic.REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    for image in froms:
        name, _, tag = image.split("@")[0].rpartition("/")[2].partition(":")
        assert "@sha256:" in image or (tag and tag != "latest"), f"FROM {image} is not pinned"
        assert re.match(r"\d+\.\d+\.\d+", tag), f"FROM {image}: pin the full version, not a moving tag"
        if name == "python":
            assert Version(tag.split("-")[0]) in SpecifierSet(requires), f"FROM {image}: the project needs {requires}"


def test_the_image_runs_as_a_numeric_non_root_user():
    users = [args for keyword, args in instructions(DOCKERFILE) if keyword == "USER"]
    assert users, "no USER: the image would run as root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"USER {users[-1]}: use a numeric non-zero uid (runAsNonRoot)"


def test_the_image_holds_no_secrets_and_does_not_disable_ray_auth():
    text = DOCKERFILE.read_text()
    assert not AWS_KEY_ID.search(text)
    for keyword, arguments in instructions(DOCKERFILE):
        if keyword in ("ENV", "ARG"):
            names = re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", arguments) or [arguments.split()[0]]
            secret = [n for n in names if ic.SECRET_LIKE.search(n)]
            assert not secret, f"{keyword} {arguments}: credentials never go into the image"
            assert "RAY_AUTH_MODE" not in arguments, "the image must not turn Ray's authentication off"
    for source in copy_sources():
        assert not re.search(r"\.env$|\.pem$|id_rsa|credentials|\.aws", source), f"COPY {source}"


def test_every_copied_file_exists_and_is_in_the_build_context():
    sources = copy_sources()
    assert "constraints.txt" in sources and "infra/docker/requirements.lock" in sources
    for source in sources:
        assert (ic.REPO / source).exists(), f"COPY {source}: no such file in the repository"
    allowed = {line[1:] for line in (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
               if line.startswith("!")}
    assert set(sources) == allowed, "Dockerfile.dockerignore must let in exactly what the Dockerfile copies"


def test_the_image_installs_exactly_the_lock_and_checks_it():
    runs = " ".join(args for keyword, args in instructions(DOCKERFILE) if keyword == "RUN")
    assert "pip install --no-deps -c constraints.txt -r install.txt" in runs
    assert "pip check" in runs and "sprdiff --help" in runs


def test_the_lock_agrees_with_the_project_pins_and_constraints():
    pins = lock_pins()
    project = tomllib.loads((ic.REPO / "pyproject.toml").read_text())["project"]
    constraints = [line.split("#")[0].strip() for line in (ic.REPO / "constraints.txt").read_text().splitlines()]
    wanted = [Requirement(r) for r in project["dependencies"]] + [Requirement(c) for c in constraints if c]
    wanted.append(Requirement("ray[default]==2.60.0"))
    problems = []
    for requirement in wanted:
        name = canonicalize_name(requirement.name)
        if name not in pins:
            problems.append(f"{requirement} is not in requirements.lock")
        elif not requirement.specifier.contains(pins[name], prereleases=True):
            problems.append(f"{requirement}: requirements.lock has {pins[name]}")
    for extra in ("aiohttp-cors", "opencensus", "prometheus-client"):  # Ray's dashboard (the `default` extra)
        if extra not in pins:
            problems.append(f"{extra} (ray[default], the dashboard KubeRay submits jobs to) is not locked")
    assert not problems, "rerun `bash infra/docker/lock.sh`:\n" + "\n".join(problems)


def test_the_installed_project_holds_every_data_file_the_code_reads(tmp_path):
    """Build the wheel the image installs, from exactly the files the Dockerfile copies."""
    context = tmp_path / "src"
    context.mkdir()
    for source in copy_sources():
        if source in ("constraints.txt", "infra/docker/requirements.lock"):
            continue
        origin = ic.REPO / source
        if origin.is_dir():
            shutil.copytree(origin, context / source, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy(origin, context / source)
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path / "wheel"), str(context)], capture_output=True, text=True,
                          timeout=300)
    if done.returncode != 0 and "No module named pip" in done.stderr:
        pytest.skip("this Python has no pip to build the wheel")
    assert done.returncode == 0, done.stderr
    [wheel] = (tmp_path / "wheel").glob("*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    data_files = sorted(str(p.relative_to(context)) for package in ("sprdiff", "pipeline", "jobs")
                        for p in (context / package).rglob("*")
                        if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts)
    missing = [f for f in data_files if f not in shipped]
    assert not missing, (f"not in the wheel the image installs: {missing} (add them to "
                         f"[tool.setuptools.package-data] in pyproject.toml)")
