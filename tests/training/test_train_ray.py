"""Ray Train end to end on CPU: 2 DDP workers per stage, shards and outputs on S3 and on local disk,
the exported model used by the codec CLI. One local Ray (2 CPUs) serves the whole module."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import struct
import tempfile
import uuid
from pathlib import Path

import boto3
import fsspec
import pytest

from jobs.cli import main
from pipeline.shards import make_shards
from pipeline.training.checkpoint import STATE_NAME, TENSORS_NAME, read_checkpoint
from sprdiff import SPRDiff
from sprdiff.model_pointer import read_pointer

STEP_KEYS = {"step", "loss", "mse_x_hat", "perceptual", "mse_x_bar", "bpp", "aux_loss", "lr", "samples_per_s"}


@pytest.fixture(scope="module")
def ray_cluster(s3_endpoint):
    """Started after the S3 endpoint so the workers inherit its AWS variables."""
    import ray

    saved = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"
    temp_dir = tempfile.mkdtemp(prefix="rt-", dir="/tmp")
    ray.init(num_cpus=2, _temp_dir=temp_dir, include_dashboard=False)
    try:
        yield
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
        if saved is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = saved


@pytest.fixture(scope="module")
def bucket(s3_endpoint) -> str:
    name = f"train-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return f"s3://{name}"


@pytest.fixture(scope="module")
def config_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("config") / "fast.json"
    path.write_text(json.dumps({"data": {"loader_workers": 0, "shuffle_buffer": 4},
                                "discriminator": {"channels": 16}, "progress_every": 1,
                                "validation": {"crop": 192, "max_images": 3}}))  # 192: MS-SSIM is defined
    return str(path)


def train(*args: str, config: str) -> int:
    return main(["train", *args, "--config", config, "--workers", "2", "--crop", "64", "--vgg-weights", "random",
                 "--checkpoint-every", "2"])


def read_metrics(uri: str) -> list[dict]:
    with fsspec.open(uri, "rt") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def stage1_run(ray_cluster, bucket, shared_image_folder, config_file) -> tuple[str, dict]:
    """Stage 1, shards and output on S3, validated at steps 2 and 3; the output and the summary printed."""
    make_shards(str(shared_image_folder), f"{bucket}/shards", crop=64, per_shard=2, threads=2)
    make_shards(str(shared_image_folder), f"{bucket}/val-shards", crop=64, per_shard=2, threads=2)
    output = f"{bucket}/runs/stage1"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert train("--stage", "1", "--data", f"{bucket}/shards", "--output", output, "--model", "tiny",
                     "--steps", "3", "--validation-data", f"{bucket}/val-shards", "--validate-every", "2",
                     config=config_file) == 0
    summary = [line for line in printed.getvalue().splitlines() if line.startswith('{"stage"')]
    return output, json.loads(summary[-1])


@pytest.fixture(scope="module")
def stage1_output(stage1_run) -> str:
    return stage1_run[0]


@pytest.fixture(scope="module")
def stage2_output(stage1_output, tmp_path_factory, shared_image_folder, config_file) -> Path:
    """Stage 2 from the stage-1 export on S3; shards and output on local disk; λ_b = 4."""
    root = tmp_path_factory.mktemp("stage2")
    make_shards(str(shared_image_folder), str(root / "shards"), crop=64, per_shard=2, threads=2)
    assert train("--stage", "2", "--data", str(root / "shards"), "--output", str(root / "run"), "--model",
                 f"{stage1_output}/model", "--steps", "2", "--lambda-rate", "4", config=config_file) == 0
    return root / "run"


def test_stage1_on_s3_with_two_workers(stage1_output):
    fs = fsspec.filesystem("s3")
    assert {p.rsplit("/", 1)[-1] for p in fs.ls(f"{stage1_output}/checkpoints")} >= {"step-000002", "step-000003"}
    metrics = read_metrics(f"{stage1_output}/metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2, 3]
    assert all(STEP_KEYS <= set(m) for m in metrics)
    assert all(m["lambda_rate"] == 0.5 and m["lr"] == 1e-4 for m in metrics)
    with tempfile.TemporaryDirectory() as tmp:
        for name in (STATE_NAME, TENSORS_NAME):
            fs.get_file(f"{stage1_output}/checkpoints/step-000003/{name}", f"{tmp}/{name}")
        state = read_checkpoint(Path(tmp))
    assert state["trainer"]["step"] == 3 and state["run"]["stage"] == 1
    model = SPRDiff.from_pretrained(f"{stage1_output}/model")
    assert model.fingerprint != SPRDiff.from_pretrained("tiny").fingerprint


def read_scalars(fs, folder: str) -> dict[str, dict[int, float]]:
    """tag -> {step: value} of every TensorBoard event file in ``folder`` (TFRecord framing read by hand)."""
    from tensorboardX.proto.event_pb2 import Event

    scalars: dict[str, dict[int, float]] = {}
    for path in fs.ls(folder, detail=False):
        data, pos = fs.cat_file(path), 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            event = Event.FromString(data[pos + 12:pos + 12 + length])  # length, its crc, data, its crc
            pos += 12 + length + 4
            for value in event.summary.value:
                scalars.setdefault(value.tag, {})[event.step] = value.simple_value
    return scalars


def test_stage1_validates_keeps_the_best_and_writes_tensorboard(stage1_run):
    output, summary = stage1_run
    fs = fsspec.filesystem("s3")
    lines = read_metrics(f"{output}/validation.jsonl")
    assert [line["step"] for line in lines] == [2, 3]
    assert all(line["bpp"] > 0 and line["psnr"] > 0 and 0 < line["ms_ssim"] < 1 and line["rd_cost"] > 0
               for line in lines)
    metrics = {m["step"]: m for m in read_metrics(f"{output}/metrics.jsonl")}
    assert "val_bpp" not in metrics[1] and metrics[3]["val_bpp"] == lines[1]["bpp"]
    assert {"val_bpp", "val_psnr", "val_ms_ssim", "val_rd_cost"} <= set(summary["metrics"])  # ray.train.report

    best = json.loads(fs.cat_file(f"{output}/best/best.json"))
    assert best["criterion"] == "rd_cost" and best["value"] == min(line["rd_cost"] for line in lines)
    assert fs.isfile(f"{output}/best/{best['checkpoint']}/state.json")
    assert read_pointer(f"{output}/best-model") is not None

    scalars = read_scalars(fs, f"{output}/tensorboard")
    assert sorted(scalars["train/loss"]) == [1, 2, 3]
    assert scalars["train/loss"][3] == pytest.approx(metrics[3]["loss"], rel=1e-6)  # float32 in the file
    assert sorted(scalars["val/bpp"]) == [2, 3]


def test_stage2_from_stage1_on_local_disk(stage2_output):
    metrics = read_metrics(str(stage2_output / "metrics.jsonl"))
    assert [m["step"] for m in metrics] == [1, 2]
    assert all({"adversarial", "d_loss"} <= set(m) and m["lambda_rate"] == 4 and m["lr"] == 5e-5 for m in metrics)
    state = read_checkpoint(stage2_output / "checkpoints" / "step-000002")
    assert state["trainer"]["stage"] == 2 and state["trainer"]["discriminator"]
    pointer = read_pointer(str(stage2_output / "model"))  # export moves the pointer to weights stored once
    assert pointer is not None and pointer.target == str(stage2_output / "models" / pointer.fingerprint)
    config = json.loads((Path(pointer.target) / "config.json").read_text())
    assert config["rate_id"] == 1  # λ_b = 4 is the second rate point


def test_exported_model_encodes_and_decodes_through_the_cli(stage2_output, tmp_path, sample_images):
    from PIL import Image

    from sprdiff import load_image

    image = tmp_path / "chelsea.png"
    Image.fromarray(sample_images["chelsea"]).save(image)
    model = str(stage2_output / "model")
    assert main(["encode", str(image), "-o", str(tmp_path / "enc"), "--model", model]) == 0
    assert main(["decode", str(tmp_path / "enc" / "chelsea.sprd"), "-o", str(tmp_path / "dec"), "--model",
                 model]) == 0
    decoded = load_image((tmp_path / "dec" / "chelsea.png").read_bytes())
    assert decoded.shape == sample_images["chelsea"].shape
    # records of the trained model are refused by another model
    assert main(["decode", str(tmp_path / "enc" / "chelsea.sprd"), "-o", str(tmp_path / "dec2"), "--model",
                 "tiny"]) == 1


def test_a_second_run_into_the_same_output_needs_resume(stage2_output, stage1_output, config_file, capsys):
    assert train("--stage", "2", "--data", str(stage2_output.parent / "shards"), "--output", str(stage2_output),
                 "--model", f"{stage1_output}/model", "--steps", "2", "--lambda-rate", "4", config=config_file) == 1
    assert "--resume" in capsys.readouterr().err


def test_stage2_needs_a_stage1_model(config_file, capsys):
    assert main(["train", "--stage", "2", "--data", "x", "--output", "y", "--config", config_file]) == 1
    assert "stage-1" in capsys.readouterr().err
