"""The model download cache (sprdiff.storage.fetch) with several processes on one node.

The codec actors of one machine start together and fetch the same ``s3://`` model into the same
cache: before the cache took a lock, each downloaded into its own temporary directory and all but
the first failed on the final rename (errno 39, directory not empty). These tests run real
processes against a real S3 endpoint (moto_server on loopback).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from sprdiff import storage

PROCESSES = 6
WEIGHTS_BYTES = 24 * 1024 * 1024  # big enough that the downloads overlap in time

FETCH_SCRIPT = textwrap.dedent("""
    import json, sys, time
    from sprdiff.storage import fetch
    start_at, uri, cache = float(sys.argv[1]), sys.argv[2], sys.argv[3]
    time.sleep(max(0.0, start_at - time.time()))  # every process calls fetch at the same moment
    try:
        print(json.dumps({"path": str(fetch(uri, cache))}))
    except Exception as e:
        print(json.dumps({"error": f"{type(e).__name__}: {e}"}))
""")


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def s3_model(s3_bucket):
    """An object-store 'model directory': a config and a large weights object."""
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    uri = f"{s3_bucket}/runs/a/model"
    weights = os.urandom(WEIGHTS_BYTES)
    fs.pipe_file(f"{uri}/config.json", b'{"model_id": "x"}')
    fs.pipe_file(f"{uri}/model.safetensors", weights)
    return uri, hashlib.sha256(weights).hexdigest()


def _fetch_in_processes(uri: str, cache, n: int) -> list[dict]:
    start_at = time.time() + 4.0  # after every interpreter has imported sprdiff.storage
    procs = [subprocess.Popen([sys.executable, "-c", FETCH_SCRIPT, str(start_at), uri, str(cache)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
             for _ in range(n)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def test_processes_fetching_one_model_at_once_all_get_the_same_complete_copy(s3_model, tmp_path):
    uri, weights_digest = s3_model
    cache = tmp_path / "cache"
    results = _fetch_in_processes(uri, cache, PROCESSES)
    errors = [r["error"] for r in results if "error" in r]
    assert not errors, errors
    paths = {r["path"] for r in results}
    assert len(paths) == 1, paths
    [path] = paths
    from pathlib import Path

    assert _digest(Path(path) / "model.safetensors") == weights_digest
    leftovers = [p.name for p in cache.iterdir() if p.is_dir() and p.name != Path(path).name]
    assert not leftovers, f"temporary copies left in the cache: {leftovers}"


def test_a_changed_model_is_fetched_again_and_a_leftover_partial_copy_is_ignored(s3_model, tmp_path):
    import s3fs

    uri, _ = s3_model
    cache = tmp_path / "cache"
    first = storage.fetch(uri, cache)
    (cache / f"{first.name}.partdead").mkdir()  # what a process killed mid-download leaves behind
    assert storage.fetch(uri, cache) == first
    s3fs.S3FileSystem(skip_instance_cache=True).pipe_file(f"{uri}/model.safetensors", b"retrained")
    second = storage.fetch(uri, cache)
    assert second != first and (second / "model.safetensors").read_bytes() == b"retrained"
