"""Validation during training, without Ray: scores from real records, training left untouched, the
best checkpoint kept across a resume and exported. The Ray run is in test_train_ray.py."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from pipeline.training import validation
from pipeline.training.checkpoint import read_checkpoint
from pipeline.training.pretrain import PretrainTrainer
from pipeline.training.stage import StageTrainer
from pipeline.training.validation import Validator, load_images, validate
from sprdiff import SPRDiff
from sprdiff.evaluation.metrics import ms_ssim, psnr
from sprdiff.model_pointer import read_pointer

CROP = 192  # MS-SSIM's 5 scales need 161 px


@pytest.fixture
def images(local_shards) -> list[np.ndarray]:
    return load_images(local_shards, max_images=3, crop=CROP)


def batches(n: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.rand(1, 3, 64, 64, generator=g) for _ in range(n)]


def test_validation_images_are_the_first_samples_in_key_order_centre_cropped(images, sample_images):
    assert [image.shape for image in images] == [(CROP, CROP, 3)] * 3
    np.testing.assert_array_equal(images[0], sample_images["astronaut"][160:352, 160:352])  # 512 px: no upscale
    assert images[1].shape == (CROP, CROP, 3) and images[1].dtype == np.uint8  # chelsea, 300 px short side


def test_scores_come_from_the_records_and_decoded_pixels(images):
    model = SPRDiff.from_pretrained("tiny")
    scores = validate(model, images)

    model.eval()
    model.entropy.update()
    records = model.compress(images)  # compressed again: the same default settings give the same bytes
    decoded = model.decompress(records)
    bpps = [8 * len(record) / (CROP * CROP) for record in records]
    assert scores["bpp"] == pytest.approx(sum(bpps) / 3, rel=1e-12)
    assert scores["bpp_total"] == pytest.approx(8 * sum(map(len, records)) / (3 * CROP * CROP), rel=1e-12)
    assert scores["psnr"] == pytest.approx(np.mean([psnr(a, b) for a, b in zip(images, decoded)]), rel=1e-12)
    assert scores["ms_ssim"] == pytest.approx(np.mean([ms_ssim(a, b) for a, b in zip(images, decoded)]), rel=1e-12)
    assert 0 < scores["ms_ssim"] < 1 and math.isfinite(scores["psnr"])
    assert validation.rd_cost(scores, 2.0, 0.5) == pytest.approx(2 * scores["mse"] + 0.5 * scores["bpp"])


def test_validating_between_steps_leaves_training_bit_identical(train_config, images):
    def run(validate_between: bool) -> tuple[dict, torch.Tensor]:
        torch.manual_seed(0)
        trainer = StageTrainer(SPRDiff.from_pretrained("tiny"), train_config, stage=1)
        trainer.set_train_mode()
        modes = [m.training for m in trainer.model.modules()]
        for batch in batches(3):
            trainer.train_step(batch)
            if validate_between:
                validate(trainer.exportable(), images[:1])
                assert [m.training for m in trainer.model.modules()] == modes  # the trainer's train mode
        return trainer.model.state_dict(), torch.random.get_rng_state()

    plain, plain_rng = run(False)
    validated, validated_rng = run(True)
    assert torch.equal(plain_rng, validated_rng)
    assert plain.keys() == validated.keys()
    for name, tensor in plain.items():  # parameters and buffers (DDP broadcasts rank 0's buffers)
        assert torch.equal(tensor, validated[name]), name


def scripted_scores(bpps: list[float]):
    """validate() with the given bpp per call (MSE 0, so rd_cost = λ_b·bpp): the files are the test's subject."""
    calls = iter(bpps)

    def fake(model, images):
        bpp = next(calls)
        return {"bpp": bpp, "bpp_total": bpp, "psnr": 30.0, "ms_ssim": math.nan, "mse": 0.0}

    return fake


def test_best_is_kept_by_the_criterion_survives_a_resume_and_is_exported(train_config, local_shards, tmp_path,
                                                                         monkeypatch):
    output = str(tmp_path / "run")
    config = train_config.with_overrides({"validation.data": local_shards, "validation.crop": 64,
                                          "validation.every": 2}).validation
    trainer = StageTrainer(SPRDiff.from_pretrained("tiny"), train_config, stage=1)  # λ_b = 0.5
    trainer.set_train_mode()
    run_info = {"stage": 1}

    monkeypatch.setattr(validation, "validate", scripted_scores([1.0, 0.6, 0.8]))
    validator = Validator(config, output, stage=1, start_step=0)
    records = {}
    for batch in batches(6):
        trainer.train_step(batch)
        if trainer.step % 2 == 0:
            records[trainer.step] = validator.run(trainer, run_info)
    validator.close()
    assert records[4] == {"val_bpp": 0.6, "val_bpp_total": 0.6, "val_psnr": 30.0, "val_ms_ssim": None,
                          "val_mse": 0.0, "val_rd_cost": 0.3}
    best = json.loads((tmp_path / "run" / "best" / "best.json").read_text())
    assert (best["step"], best["criterion"], best["value"], best["checkpoint"]) == (4, "rd_cost", 0.3, "step-000004")
    assert best["scores"]["bpp"] == 0.6
    assert sorted(p.name for p in (tmp_path / "run" / "best").iterdir()) == ["best.json", "step-000004"]
    saved = read_checkpoint(tmp_path / "run" / "best" / "step-000004")
    assert saved["trainer"]["step"] == 4 and saved["run"] == run_info
    lines = [json.loads(line) for line in (tmp_path / "run" / "validation.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [2, 4, 6] and lines[2]["rd_cost"] == 0.4

    # resumed from step 4: the later line is dropped, 0.3 must still be beaten
    monkeypatch.setattr(validation, "validate", scripted_scores([0.7, 0.4]))
    trainer.step = 4
    resumed = Validator(config, output, stage=1, start_step=4)
    trainer.step = 6
    resumed.run(trainer, run_info)  # rd_cost 0.35: worse than 0.3
    assert json.loads((tmp_path / "run" / "best" / "best.json").read_text())["step"] == 4
    trainer.step = 8
    resumed.run(trainer, run_info)  # rd_cost 0.2: the new best
    resumed.close()
    assert json.loads((tmp_path / "run" / "best" / "best.json").read_text())["step"] == 8
    assert sorted(p.name for p in (tmp_path / "run" / "best").iterdir()) == ["best.json", "step-000008"]
    lines = [json.loads(line) for line in (tmp_path / "run" / "validation.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [2, 4, 6, 8] and lines[2]["rd_cost"] == 0.35

    # the export of the best holds the parameters of its checkpoint, behind OUTPUT/best-model
    best_params = {n: p.detach().clone() for n, p in trainer.trainable_state().items()}  # written at "step 8"
    for batch in batches(1):
        trainer.train_step(batch)
    fingerprint = validation.export_best(trainer, output)
    pointer = read_pointer(f"{output}/best-model")
    assert pointer is not None and pointer.fingerprint == fingerprint
    exported = dict(SPRDiff.from_pretrained(f"{output}/best-model").named_parameters())
    for name, tensor in best_params.items():
        assert torch.equal(exported[name], tensor), name


def test_stage0_validates_its_export_without_rd_cost_and_picks_by_psnr(train_config, local_shards, tmp_path):
    config = train_config.with_overrides({"validation.data": local_shards, "validation.crop": 64}).validation
    assert config.criterion == "rd_cost"
    trainer = PretrainTrainer(SPRDiff.from_pretrained("tiny"), train_config)
    trainer.set_train_mode()
    trainer.train_step(batches(1)[0])
    scores = Validator(config, str(tmp_path), stage=0, start_step=0).run(trainer, {"stage": 0})
    assert "val_rd_cost" not in scores and scores["val_psnr"] > 0
    assert scores["val_ms_ssim"] is None  # 64 px: MS-SSIM undefined, written as null
    best = json.loads((tmp_path / "best" / "best.json").read_text())
    assert (best["criterion"], best["value"]) == ("psnr", scores["val_psnr"])
    assert not validation.better(math.nan, None, "ms_ssim")  # an undefined score never becomes the best


def test_validation_flags_reach_the_config_with_local_paths_made_absolute(tmp_path, monkeypatch):
    from jobs.cli import build_parser
    from jobs.train_commands import build_run_spec

    monkeypatch.chdir(tmp_path)
    base = ["train", "--stage", "1", "--data", "shards", "--output", "run", "--vgg-weights", "random"]
    assert build_run_spec(build_parser().parse_args(base)).train_config.validation.data is None
    spec = build_run_spec(build_parser().parse_args([*base, "--validation-data", "val", "--validate-every", "5"]))
    assert spec.train_config.validation.data == str(tmp_path / "val")  # Ray workers run in another directory
    assert spec.train_config.validation.every == 5
