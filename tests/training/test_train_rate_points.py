"""Training several rate points jointly (``stage.rate_points``): a one-rate model gets them, the
samples take the rates in turn with their own λ_b, and the exported model codes at every rate."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.training.config import RatePoint, StageConfig
from pipeline.training.export import export_model
from pipeline.training.losses import codec_loss
from pipeline.training.stage import StageTrainer
from pipeline.training.validation import validate_rate_points
from sprdiff import SPRDiff
from sprdiff.model_pointer import read_pointer

POINTS = [{"lambda_rate": 24.0, "init_gain": 0.5}, {"lambda_rate": 12.0, "init_gain": 1.0},
          {"lambda_rate": 6.0, "init_gain": 2.0}]


@pytest.fixture
def rates_config(train_config):
    return train_config.with_overrides({"stage2.rate_points": POINTS, "stage2.lambda_rate": 12.0,
                                        "stage2.weights.adversarial": 0.0, "stage2.weights.perceptual": 0.0})


def images(n: int, batch: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return [torch.rand(batch, 3, 64, 64, generator=g) for _ in range(n)]


def test_a_one_rate_model_gets_the_rate_points_with_the_default_at_lambda_rate(rates_config):
    model = SPRDiff.from_pretrained("tiny")
    trainer = StageTrainer(model, rates_config, stage=2)
    assert (model.config.rates, model.config.rate_id, trainer.rate_id) == (3, 1, 1)
    assert trainer.rate_lambdas == (24.0, 12.0, 6.0)
    np.testing.assert_allclose(model.rate_gains.log_gain[:, 0].exp().detach(), [0.5, 1.0, 2.0], rtol=1e-6)
    assert {"rate_gains.log_gain", "rate_gains.log_inverse_gain", "entropy.rate_side"} <= set(trainer.main_names)


def test_samples_take_the_rates_in_turn_and_only_their_gains_move(rates_config):
    model = SPRDiff.from_pretrained("tiny")
    trainer = StageTrainer(model, rates_config, stage=2)
    seen = []
    for step, x in enumerate(images(4)):
        before = model.rate_gains.log_gain.detach().clone()
        seen.append(trainer.train_step(x)["rate_id"])
        moved = (model.rate_gains.log_gain.detach() != before).any(dim=1).tolist()
        if step < 3:  # a row that never had a gradient stays (Adam's moments of it are zero)
            assert moved == [r <= step for r in range(3)], (step, moved)
    assert seen == [0.0, 1.0, 2.0, 0.0]


def test_a_batch_spreads_its_samples_over_the_rates(rates_config):
    trainer = StageTrainer(SPRDiff.from_pretrained("tiny"),
                           rates_config.with_overrides({"data.batch_size": 2}), stage=2)
    assert trainer.sample_rates(0, 2)[0].tolist() == [0, 1]
    trainer.train_step(images(1, batch=2)[0])
    rates, lambdas = trainer.sample_rates(0, 2)  # the next update goes on where this one stopped
    assert rates.tolist() == [2, 0] and lambdas.tolist() == [6.0, 24.0]


def test_per_sample_lambda_weighs_each_samples_own_rate(rates_config):
    model = SPRDiff.from_pretrained("tiny").eval()
    x = images(1, batch=2)[0]
    weights = rates_config.stage2.weights
    with torch.no_grad():
        out = model(x, torch.tensor([0, 0]))
        joint, terms = codec_loss(x, out, None, weights, torch.tensor([24.0, 6.0]))
        singles = [codec_loss(x[i:i + 1], {k: (v[i:i + 1] if torch.is_tensor(v) else
                                                {n: p[i:i + 1] for n, p in v.items()}) for k, v in out.items()},
                              None, weights, lam)[1]["bpp"] for i, lam in enumerate((24.0, 6.0))]
        plain, _ = codec_loss(x, out, None, weights, 0.0)
    expected_rate = (24.0 * singles[0] + 6.0 * singles[1]) / 2
    assert float(joint - plain) == pytest.approx(float(expected_rate), rel=1e-5)
    assert float(terms["bpp"]) == pytest.approx(float(sum(singles) / 2), rel=1e-6)


def test_resuming_with_other_rate_points_is_refused(rates_config):
    trainer = StageTrainer(SPRDiff.from_pretrained("tiny"), rates_config, stage=2)
    trainer.train_step(images(1)[0])
    state = trainer.state_dict()
    other = rates_config.with_overrides({"stage2.rate_points": [POINTS[0], POINTS[1]]})
    with pytest.raises(ValueError, match="rate points"):
        StageTrainer(SPRDiff.from_pretrained("tiny"), other, stage=2).load_state_dict(state)
    again = StageTrainer(SPRDiff.from_pretrained("tiny"), rates_config, stage=2)
    again.load_state_dict(state)
    assert torch.equal(again.model.rate_gains.log_gain, trainer.model.rate_gains.log_gain)


def test_a_model_with_other_rate_points_is_refused(rates_config, rate_points_model_dir):
    two = rates_config.with_overrides({"stage2.rate_points": [POINTS[0], POINTS[1]]})
    with pytest.raises(ValueError, match="has 3 rate points"):
        StageTrainer(SPRDiff.from_pretrained(str(rate_points_model_dir)), two, stage=2)


@pytest.mark.parametrize("points, lambda_rate, message", [
    ([POINTS[0]], 24.0, "2 to 16"),
    (POINTS, 8.0, "must be one of"),
    ([{"lambda_rate": 0.0, "init_gain": 1.0}, POINTS[1]], 12.0, "lambda_rate > 0"),
])
def test_bad_rate_points_are_refused(rates_config, points, lambda_rate, message):
    with pytest.raises(ValueError, match=message):
        rates_config.with_overrides({"stage2.rate_points": points, "stage2.lambda_rate": lambda_rate})


def test_the_exported_model_codes_and_is_validated_at_every_rate(rates_config, tmp_path, sample_images):
    trainer = StageTrainer(SPRDiff.from_pretrained("tiny"), rates_config, stage=2)
    for x in images(3):
        trainer.train_step(x)
    fingerprint = export_model(trainer.exportable(), str(tmp_path), trainer.rate_id)
    exported = SPRDiff.from_pretrained(read_pointer(str(tmp_path / "model")).target)
    assert exported.fingerprint == fingerprint
    assert (exported.rate_ids, exported.config.rate_id) == ((0, 1, 2), 1)
    image = np.ascontiguousarray(sample_images["coffee"][:64, :128])
    sizes = [len(exported.compress([image], rate=r, colour_correction=False)[0]) for r in exported.rate_ids]
    assert sizes[0] < sizes[2]

    scores = validate_rate_points(trainer.exportable(), [image], 16.0, trainer.rate_lambdas)
    for rate, lam in enumerate(trainer.rate_lambdas):
        assert scores[f"rd_cost_rate{rate}"] == pytest.approx(16.0 * scores[f"mse_rate{rate}"]
                                                               + lam * scores[f"bpp_rate{rate}"])
    assert scores["bpp"] == pytest.approx(np.mean([scores[f"bpp_rate{r}"] for r in range(3)]))
    assert scores["bpp_rate0"] < scores["bpp_rate2"]


def test_stage_config_names_the_default_rate_by_its_place():
    stage = StageConfig(steps=1, lr=1e-4, lr_drops=(), lambda_rate=6.0, weights=None, rate_ids={"6": 7},
                        prior_lr_scale=1.0, rate_points=(RatePoint(24.0, 0.5), RatePoint(6.0, 2.0)))
    assert stage.rate_id_for(6.0) == 1  # rate_ids is for one-rate runs


def test_the_rate_points_can_learn_at_a_multiple_of_the_lr_and_resume_only_with_it(rates_config):
    def trainer(prior: float, rate: float) -> StageTrainer:
        config = rates_config.with_overrides({"stage2.prior_lr_scale": prior, "stage2.rate_lr_scale": rate})
        return StageTrainer(SPRDiff.from_pretrained("tiny"), config, stage=2)

    plain, scaled = trainer(1.0, 1.0), trainer(1.0, 30.0)
    assert (plain.group_names, scaled.group_names) == (["main"], ["main", "rate_points"])
    named = dict(scaled.model.named_parameters())
    own = {named[n] for n in ("rate_gains.log_gain", "rate_gains.log_inverse_gain", "entropy.rate_side")}
    main, rate = scaled.optimizer.param_groups
    assert set(rate["params"]) == own and not set(main["params"]) & own
    lr = rates_config.stage2.lr
    assert [g["lr"] for g in scaled.optimizer.param_groups] == pytest.approx([lr, 30 * lr])

    x = images(1)[0]  # the first sample takes rate 0
    moved = {}
    for name, t in (("plain", plain), ("scaled", scaled)):
        before = t.model.rate_gains.log_gain.detach()[0].clone()
        t.set_train_mode()
        t.train_step(x)
        moved[name] = (t.model.rate_gains.log_gain.detach()[0] - before).abs().max().item()
    # Adam's first step moves each parameter by about its lr
    assert moved["scaled"] == pytest.approx(30 * lr, rel=0.05) and moved["plain"] == pytest.approx(lr, rel=0.05)

    state = scaled.state_dict()
    resumed = trainer(1.0, 30.0)
    resumed.load_state_dict(state)
    assert [g["lr"] for g in resumed.optimizer.param_groups] == pytest.approx([lr, 30 * lr])
    for other in (trainer(1.0, 1.0), trainer(30.0, 1.0)):  # one group, or a prior group in its place
        with pytest.raises(ValueError, match="rate_lr_scale"):
            other.load_state_dict(state)
    # a checkpoint from before groups were named: two groups were the main one and the prior's
    legacy = trainer(30.0, 1.0).state_dict()
    for group in legacy["optimizer"]["param_groups"]:
        del group["name"]
    trainer(30.0, 1.0).load_state_dict(legacy)
    with pytest.raises(ValueError, match=r"\['main', 'prior'\]"):
        trainer(1.0, 30.0).load_state_dict(legacy)
