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
    assert (gpu.actors, gpu.actor_device) == (4, "cuda")


def test_bad_settings_are_refused_with_a_message():
    with pytest.raises(ValueError, match="actors"):
        ComputeConfig(actors=0)
    with pytest.raises(ValueError, match="shard size"):
        EncodeJobConfig(input="a", output="b", shard_size=0)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["decode-job", "--input", "a", "--output", "b", "--format", "gif"])


def test_credentials_in_uris_are_never_printed():
    assert redact_uri("s3://key:secret@bucket/prefix") == "s3://bucket/prefix"
    assert redact_uri("https://user:pw@host:9000/x") == "https://host:9000/x"
    assert redact_uri("/local/path") == "/local/path"
