"""The job commands' arguments and resource defaults (no Ray started)."""

from __future__ import annotations

import os

import pytest

from jobs.batch_commands import _compute
from jobs.cli import build_parser
from pipeline.config import ComputeConfig, EncodeJobConfig
from pipeline.ray_runner import embedded_cpus
from pipeline.storage import redact_uri


def parse(*extra: str):
    return build_parser().parse_args(["encode-job", "--input", "in", "--output", "out", *extra])


def test_local_cpu_default_is_one_single_threaded_actor_per_core_and_room_for_readers():
    compute = _compute(parse())
    assert compute.actors == (os.cpu_count() or 1) and compute.actor_threads == 1
    assert embedded_cpus(compute) >= compute.actors * compute.cpus_per_actor + compute.io_cpus
    assert _compute(parse("--num-cpus", "2")).actors == 1
    assert _compute(parse("--address", "auto")).actors == 1
    gpu = _compute(parse("--gpus-per-actor", "1", "--actors", "4"))
    assert (gpu.pool, gpu.actor_device) == ((4, 4), "cuda")
    elastic = _compute(parse("--gpus-per-actor", "1", "--actors", "2:16", "--io-tasks", "8"))
    assert (elastic.pool, elastic.max_io_tasks) == ((2, 16), 8)
    for bad in ("0", "4:2", "two", "1:2:3"):
        with pytest.raises(SystemExit):
            parse("--actors", bad)


def test_bad_settings_are_refused_with_a_message():
    with pytest.raises(ValueError, match="actors"):
        ComputeConfig(actors=0)
    with pytest.raises(ValueError, match="rows per part"):
        EncodeJobConfig(input="a", output="b", rows_per_part=0)
    with pytest.raises(ValueError, match="exactly one"):
        EncodeJobConfig(input="a", input_list="b.csv", output="c")
    assert parse("--shard-size", "7").rows_per_part == 7  # the old name still works
    with pytest.raises(SystemExit):
        build_parser().parse_args(["decode-job", "--input", "a", "--output", "b", "--format", "gif"])


def test_credentials_in_uris_are_never_printed():
    assert redact_uri("s3://key:secret@bucket/prefix") == "s3://bucket/prefix"
    assert redact_uri("https://user:pw@host:9000/x") == "https://host:9000/x"
    assert redact_uri("/local/path") == "/local/path"
