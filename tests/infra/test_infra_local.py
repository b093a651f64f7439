"""The local S3 endpoint (infra/local): moto.sh really starts moto_server on loopback, exports
variables that reach it, and stops what it started; the MinIO compose file is pinned and local."""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import infra_checks as ic
import pytest
import yaml

LOCAL = ic.REPO / "infra" / "local"
MOTO_SH = LOCAL / "moto.sh"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def moto_env(tmp_path):
    """Settings for one moto.sh instance of this test: a free port, a private state folder."""
    port = _free_port()
    env = {**os.environ, "SPRDIFF_S3_PORT": str(port), "SPRDIFF_S3_STATE": str(tmp_path / "s3"),
           "SPRDIFF_S3_BUCKET": "sprdiff-test", "SPRDIFF_PYTHON": sys.executable}
    for name in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        env.pop(name, None)
    yield env
    subprocess.run(["bash", str(MOTO_SH), "stop"], env=env, capture_output=True, timeout=30)
    pidfile = tmp_path / "s3" / "moto_server.pid"
    assert not pidfile.exists(), "moto.sh stop left its pid file"


def moto(env: dict, *args: str, timeout: int = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(MOTO_SH), *args], env=env, capture_output=True, text=True, timeout=timeout)


def exported(text: str) -> dict[str, str]:
    variables = {}
    for line in text.splitlines():
        if line.startswith("export "):
            name, _, value = line[len("export "):].partition("=")
            variables[name] = shlex.split(value)[0]
    return variables


def test_moto_sh_starts_a_loopback_s3_with_a_bucket_and_stops_it(moto_env):
    import boto3

    port = int(moto_env["SPRDIFF_S3_PORT"])
    started = moto(moto_env, "start")
    assert started.returncode == 0, started.stderr
    variables = exported(started.stdout)
    assert variables["AWS_ENDPOINT_URL"] == f"http://127.0.0.1:{port}"
    assert variables["SPRDIFF_BUCKET"] == "s3://sprdiff-test"
    assert _port_open(port)
    again = moto(moto_env, "start")  # idempotent: reuses the running server
    assert again.returncode == 0 and "already running" in again.stderr

    s3 = boto3.client("s3", endpoint_url=variables["AWS_ENDPOINT_URL"], region_name=variables["AWS_REGION"],
                      aws_access_key_id=variables["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=variables["AWS_SECRET_ACCESS_KEY"])
    s3.put_object(Bucket="sprdiff-test", Key="incoming/2026-11-24/a.png", Body=b"\x89PNG")
    listed = s3.list_objects_v2(Bucket="sprdiff-test")["Contents"]
    assert [o["Key"] for o in listed] == ["incoming/2026-11-24/a.png"]

    stopped = moto(moto_env, "stop")
    assert stopped.returncode == 0 and "stopped moto_server" in stopped.stderr
    assert not _port_open(port)


def test_moto_sh_run_sets_the_variables_keeps_the_status_and_stops(moto_env):
    port = int(moto_env["SPRDIFF_S3_PORT"])
    script = ("import os, sys, fsspec; fs = fsspec.filesystem('s3'); "
              "fs.pipe(os.environ['SPRDIFF_BUCKET'] + '/x.txt', b'hi'); "
              "print(fs.cat(os.environ['SPRDIFF_BUCKET'] + '/x.txt').decode()); sys.exit(3)")
    done = moto(moto_env, "run", "--", sys.executable, "-c", script)
    assert done.returncode == 3, done.stderr
    assert done.stdout.strip() == "hi"
    assert "stopped moto_server" in done.stderr
    assert not _port_open(port)


def test_moto_sh_refuses_a_port_that_another_program_holds(moto_env):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        env = {**moto_env, "SPRDIFF_S3_PORT": str(holder.getsockname()[1])}
        done = moto(env, "start")
    assert done.returncode == 1
    assert "is taken by another program" in done.stderr


def test_the_minio_compose_file_is_pinned_local_and_holds_no_credentials():
    compose = yaml.safe_load((LOCAL / "compose.yaml").read_text())
    for name, service in compose["services"].items():
        image = service["image"]
        assert ":RELEASE." in image or "@sha256:" in image, f"{name}: {image} is not pinned to a release"
        for mapping in service.get("ports", []):
            assert str(mapping).startswith("127.0.0.1:"), f"{name}: port {mapping} is not bound to loopback"
        for key, value in service.get("environment", {}).items():
            if ic.SECRET_LIKE.search(key) or "PASSWORD" in key or key.endswith("_USER"):
                assert str(value).startswith("${") and ":?" in str(value), f"{name}: {key} is set inline"


def _tiny_png(tmp_path: Path) -> list[Path]:
    from skimage import data

    from sprdiff.images import encode_png

    paths = []
    for i, image in enumerate([data.astronaut()[:96, :128], data.coffee()[:64, :64]]):
        path = tmp_path / f"{i:03d}.png"
        path.write_bytes(encode_png(image))
        paths.append(path)
    return paths


@pytest.mark.slow
def test_the_documented_local_path_encodes_and_decodes_through_moto(moto_env, tmp_path):
    """The README's local S3 path, as written: moto.sh, upload, encode-job, decode-job."""
    images = _tiny_png(tmp_path)
    sprdiff = Path(sys.executable).parent / "sprdiff"
    day = "2026-11-24"
    script = "\n".join([
        "set -e",
        f"{shlex.quote(sys.executable)} -c \"import fsspec, os, sys; fs = fsspec.filesystem('s3'); "
        f"[fs.put(p, os.environ['SPRDIFF_BUCKET'] + '/incoming/{day}/' + os.path.basename(p)) "
        f"for p in sys.argv[1:]]\" {' '.join(shlex.quote(str(p)) for p in images)}",
        f'{sprdiff} encode-job --input "$SPRDIFF_BUCKET/incoming/{day}/" '
        f'--output "$SPRDIFF_BUCKET/archive/daily/{day}/"',
        f'{sprdiff} decode-job --input "$SPRDIFF_BUCKET/archive/" --output "$SPRDIFF_BUCKET/restored/"',
        f"{shlex.quote(sys.executable)} -c \"import fsspec, os; "
        f"print(sorted(fsspec.filesystem('s3').find(os.environ['SPRDIFF_BUCKET'] + '/restored/')))\"",
    ])
    env = {**moto_env, "RAY_AUTH_MODE": "disabled"}
    done = moto(env, "run", "--", "bash", "-c", script, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    restored = done.stdout.strip().splitlines()[-1]
    assert "restored/000.png" in restored and "restored/001.png" in restored, restored
