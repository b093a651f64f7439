"""The training config file: the paper's values, strict keys, merging and overrides."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from jobs.train_commands import DEFAULT_CONFIG
from pipeline.training.config import TrainConfig, load_config, merge
from pipeline.training.stage import PiecewiseConstant


def test_default_file_holds_the_papers_values():
    config = load_config(DEFAULT_CONFIG)
    s1, s2 = config.stage1, config.stage2
    assert (s1.steps, s1.lr, s1.lambda_rate, s1.lr_drops) == (30000, 1e-4, 0.5, ())
    assert (s1.weights.mse_x_hat, s1.weights.perceptual, s1.weights.mse_x_bar, s1.weights.adversarial) == (2, 1, 2, 0)
    assert (s2.steps, s2.lr, s2.lr_drops) == (30000, 5e-5, ((28000, 1e-5), (29000, 1e-6)))
    assert s2.weights.adversarial == 0.1
    assert {float(k) for k in s2.rate_ids} == {8.0, 4.0, 2.0}
    assert s2.lambda_rate in (8.0, 4.0, 2.0)
    assert (config.data.crop, config.data.batch_size) == (512, 1)
    assert config.vgg_weights is None  # the user must say where VGG16 comes from


def test_stage2_learning_rate_steps():
    s2 = load_config(DEFAULT_CONFIG).stage2
    assert [s2.lr_at(step) for step in (0, 27999, 28000, 28999, 29000, 29999)] == [5e-5, 5e-5, 1e-5, 1e-5, 1e-6, 1e-6]
    factor = PiecewiseConstant(s2.lr, s2.lr_drops)
    assert [s2.lr * factor(step) for step in (0, 28000, 29000)] == pytest.approx([5e-5, 1e-5, 1e-6])
    assert s2.rate_id_for(4) == 1 and s2.rate_id_for(3) is None


def test_unknown_and_missing_keys_fail(tmp_path):
    data = json.loads(DEFAULT_CONFIG.read_text())
    with pytest.raises(ValueError, match="unknown keys \\['lambda_b'\\]"):
        TrainConfig.from_dict(merge(data, {"stage1": {"lambda_b": 1}}))
    del data["stage2"]["lr"]
    with pytest.raises(ValueError, match="missing keys \\['lr'\\]"):
        TrainConfig.from_dict(data)


def test_user_file_is_merged_over_the_defaults(tmp_path):
    user = tmp_path / "mine.json"
    user.write_text(json.dumps({"vgg_weights": "/weights/vgg16.safetensors", "stage2": {"lambda_rate": 2}}))
    config = load_config(DEFAULT_CONFIG, user)
    assert config.vgg_weights == "/weights/vgg16.safetensors"
    assert config.stage2.lambda_rate == 2 and config.stage2.lr == 5e-5  # the rest stays


def test_several_user_files_merge_in_order(tmp_path):
    recipe, change = tmp_path / "recipe.json", tmp_path / "change.json"
    recipe.write_text(json.dumps({"stage2": {"lambda_rate": 2, "steps": 100}, "data": {"crop": 128}}))
    change.write_text(json.dumps({"stage2": {"steps": 300}}))
    config = load_config(DEFAULT_CONFIG, recipe, change)
    assert (config.stage2.steps, config.stage2.lambda_rate, config.data.crop) == (300, 2, 128)
    assert load_config(DEFAULT_CONFIG, change, recipe).stage2.steps == 100  # the last file wins


def test_overrides_are_checked():
    config = load_config(DEFAULT_CONFIG)
    assert config.with_overrides({"data.crop": 128}).data.crop == 128
    with pytest.raises(KeyError, match="data.crops"):
        config.with_overrides({"data.crops": 128})
    with pytest.raises(ValueError, match="multiple of 64"):
        config.with_overrides({"data.crop": 100})


def test_the_demo_recipe_is_a_valid_config_without_outside_weights():
    """jobs/configs/demo.json (how the shipped demo model was trained) merges over the defaults,
    needs no VGG16, starts from the untrained demo architecture and trains its UNet base."""
    demo = Path(DEFAULT_CONFIG).parent / "demo.json"
    config = load_config(DEFAULT_CONFIG, demo)
    assert config.model == "demo-init" and config.vgg_weights is None
    assert config.train_pretrained == ("unet",)
    for stage in (config.stage1, config.stage2):
        assert stage.weights.perceptual == 0 and stage.weights.ms_ssim > 0
    assert config.stage2.rate_id_for(config.stage2.lambda_rate) == 0
    script = (Path(DEFAULT_CONFIG).parent / "demo.sh").read_text()
    assert "--stage 0" in script and "--stage 1" in script and "--stage 2" in script


@pytest.mark.parametrize("extra", ["demo_stage2_continued.json", "demo_stage2_third.json",
                                   "demo_stage2_crop256.json", "demo_stage2_crop512.json",
                                   "demo_stage2_crop512_second.json"])
def test_the_demo_recipes_later_stage2_runs_change_only_their_schedule_and_crops(extra):
    configs = Path(DEFAULT_CONFIG).parent
    demo = load_config(DEFAULT_CONFIG, configs / "demo.json")
    continued = load_config(DEFAULT_CONFIG, configs / "demo.json", configs / extra)
    assert continued.stage2.lambda_rate == demo.stage2.lambda_rate
    assert continued.stage2.weights == demo.stage2.weights and continued.stage2.rate_ids == demo.stage2.rate_ids
    assert continued.stage1 == demo.stage1 and continued.stage0 == demo.stage0
    assert continued.stage2.steps > 0 and continued.stage2.lr_drops != demo.stage2.lr_drops
    # Larger crops may come with a smaller batch; nothing else about the data changes.
    assert replace(continued.data, crop=demo.data.crop, batch_size=demo.data.batch_size) == demo.data
    assert continued.data.crop ** 2 * continued.data.batch_size >= demo.data.crop ** 2 * demo.data.batch_size
    assert extra in (configs / "demo.sh").read_text()


@pytest.mark.parametrize("extra", ["demo_stage2_haarpsi.json", "demo_stage2_haarpsi_second.json",
                                   "demo_stage2_haarpsi_rate12.json"])
def test_the_demo_recipes_haarpsi_runs_add_only_the_haarpsi_term_and_keep_rate_id_0(extra):
    configs = Path(DEFAULT_CONFIG).parent
    demo = load_config(DEFAULT_CONFIG, configs / "demo.json")
    run = load_config(DEFAULT_CONFIG, configs / "demo.json", configs / extra)
    assert run.stage2.weights.haarpsi > 0 == demo.stage2.weights.haarpsi
    assert replace(run.stage2.weights, haarpsi=0.0) == demo.stage2.weights
    assert run.stage2.lambda_rate >= demo.stage2.lambda_rate
    assert run.stage2.rate_id_for(run.stage2.lambda_rate) == 0  # still the demo model's one rate point
    assert run.stage1 == demo.stage1 and run.stage0 == demo.stage0
    assert extra in (configs / "demo.sh").read_text()


def test_memory_and_accumulation_flags_reach_the_config(tmp_path, monkeypatch):
    from jobs.cli import build_parser
    from jobs.train_commands import build_run_spec

    monkeypatch.chdir(tmp_path)
    base = ["train", "--stage", "1", "--data", "shards", "--output", "run", "--vgg-weights", "random"]
    spec = build_run_spec(build_parser().parse_args(base))
    assert (spec.train_config.grad_accum, spec.train_config.activation_checkpointing) == (1, False)
    spec = build_run_spec(build_parser().parse_args([*base, "--grad-accum", "4", "--activation-checkpointing"]))
    assert (spec.train_config.grad_accum, spec.train_config.activation_checkpointing) == (4, True)
    with pytest.raises(ValueError, match="grad_accum must be >= 1"):
        build_run_spec(build_parser().parse_args([*base, "--grad-accum", "0"]))


def test_validation_settings_are_checked():
    config = load_config(DEFAULT_CONFIG)
    assert config.validation.data is None  # no validation unless a validation shard set is named
    with pytest.raises(ValueError, match="criterion must be one of"):
        config.with_overrides({"validation.criterion": "lpips"})
    with pytest.raises(ValueError, match="multiple of 64"):
        config.with_overrides({"validation.crop": 100})


def test_the_paper_recipe_is_the_papers_schedule_for_sd_turbo(tmp_path, monkeypatch):
    from jobs.cli import build_parser
    from jobs.train_commands import build_run_spec

    monkeypatch.chdir(tmp_path)
    args = build_parser().parse_args(["train", "--stage", "2", "--recipe", "paper", "--data", "shards", "--output",
                                      "run", "--model", "runs/stage1/model", "--lambda-rate", "4",
                                      "--vgg-weights", "vgg16.pth"])
    spec = build_run_spec(args)
    config = spec.train_config
    assert config.model == "sd-turbo" and (config.data.crop, config.data.batch_size) == (512, 1)
    assert config.activation_checkpointing and config.bf16_on_gpu
    assert (config.stage1.steps, config.stage1.lr, config.stage1.lambda_rate) == (30000, 1e-4, 0.5)
    assert (config.stage2.steps, config.stage2.lr) == (30000, 5e-5)
    assert {float(k): v for k, v in config.stage2.rate_ids.items()} == {8.0: 0, 4.0: 1, 2.0: 2}
    assert spec.lambda_rate == 4.0 and spec.steps == 30000
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--stage", "1", "--recipe", "papers", "--data", "d", "--output", "o"])


def test_the_paper_script_runs_stage1_then_stage2_at_each_rate_point(tmp_path):
    """paper.sh with a stand-in for the sprdiff command that records its arguments."""
    import subprocess

    recorder = tmp_path / "sprdiff"
    recorder.write_text('#!/usr/bin/env bash\necho "$@" >> "$(dirname "$0")/calls.txt"\n')
    recorder.chmod(0o755)
    script = Path(DEFAULT_CONFIG).parent / "paper.sh"
    env = {"PATH": "/usr/bin:/bin", "DATA": "s3://c/shards/", "VGG": "s3://w/vgg.pth", "RUN": "s3://r/paper",
           "SPRDIFF": str(recorder), "WORKERS": "8"}
    subprocess.run(["bash", str(script)], env=env, check=True, capture_output=True)
    calls = (tmp_path / "calls.txt").read_text().splitlines()
    assert len(calls) == 4
    assert calls[0].startswith("train --stage 1 --recipe paper") and "--output s3://r/paper/stage1" in calls[0]
    for call, rate in zip(calls[1:], ("8", "4", "2")):
        assert call.startswith("train --stage 2 --recipe paper") and f"--lambda-rate {rate} " in call + " "
        assert "--model s3://r/paper/stage1/model" in call and "--resume" in call and "--workers 8" in call
    missing = subprocess.run(["bash", str(script)], env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True)
    assert missing.returncode != 0 and "set DATA" in missing.stderr
