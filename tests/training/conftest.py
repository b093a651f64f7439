"""Fixtures of the training tests: a small image folder, its shards, a fast training config."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from jobs.train_commands import DEFAULT_CONFIG
from pipeline.training.config import load_config

# What every test run changes from the paper's defaults: toy sizes, a random VGG, no loader processes.
FAST_OVERRIDES = {
    "vgg_weights": "random",
    "data": {"crop": 64, "batch_size": 1, "loader_workers": 0, "shuffle_buffer": 4},
    "discriminator": {"channels": 16},
    "progress_every": 1,
}


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Toy models on 64x64 crops gain nothing from a second thread, and on a shared 2-core machine
    two spinning OpenMP threads per process made steps 10x slower; Ray workers use one as well."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def train_config():
    return load_config(DEFAULT_CONFIG).with_overrides({
        "vgg_weights": "random", "data.crop": 64, "data.loader_workers": 0, "data.shuffle_buffer": 4,
        "discriminator.channels": 16})


@pytest.fixture
def fast_config_file(tmp_path) -> Path:
    path = tmp_path / "fast_config.json"
    path.write_text(json.dumps(FAST_OVERRIDES))
    return path


def write_image_folder(root: Path, sample_images: dict[str, np.ndarray]) -> Path:
    """astronaut.png, photos/coffee.jpg, photos/chelsea.v2.png, tiny.png (40x30), broken.jpg, notes.txt."""
    (root / "photos").mkdir(parents=True)
    Image.fromarray(sample_images["astronaut"]).save(root / "astronaut.png")
    Image.fromarray(sample_images["coffee"]).save(root / "photos" / "coffee.jpg", quality=90)
    Image.fromarray(sample_images["chelsea"]).save(root / "photos" / "chelsea.v2.png")
    Image.fromarray(sample_images["chelsea"][:30, :40]).save(root / "tiny.png")
    (root / "broken.jpg").write_bytes(b"plain text that claims to be a JPEG")
    (root / "notes.txt").write_text("not an image extension: ignored")
    return root


@pytest.fixture
def expected_keys() -> list[str]:
    """The keys make-shards gives the readable images of ``image_folder``, in order."""
    return ["astronaut", "photos_chelsea_v2", "photos_coffee", "tiny"]


@pytest.fixture
def image_folder(tmp_path, sample_images) -> Path:
    return write_image_folder(tmp_path / "images", sample_images)


@pytest.fixture(scope="session")
def shared_image_folder(tmp_path_factory, sample_images) -> Path:
    """``image_folder`` for module- and session-scoped fixtures (do not modify it)."""
    return write_image_folder(tmp_path_factory.mktemp("shared") / "images", sample_images)


@pytest.fixture
def local_shards(tmp_path, image_folder) -> str:
    from pipeline.shards import make_shards

    out = tmp_path / "shards"
    make_shards(str(image_folder), str(out), crop=64, per_shard=2, threads=2)
    return str(out)
