"""LPIPS and DISTS load only from local files (random weights of the real architectures here)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torchvision

from sprdiff.evaluation.learned import DISTSMetric, LPIPSMetric, WeightsError, build_dists_module
from sprdiff.evaluation.suite import MetricSuite


@pytest.fixture(scope="module")
def pair(small_images):
    ref = small_images["coffee.png"]
    noisy = np.clip(ref.astype(np.int16) + np.random.default_rng(0).integers(-40, 41, ref.shape), 0, 255)
    return ref, noisy.astype(np.uint8)


class NotATensor:
    """Any class: loading it needs full unpickling, which weights_only=True refuses."""


def _tensor(pixels):
    return torch.from_numpy(np.array(pixels)).permute(2, 0, 1)[None].float() / 255


def test_lpips_loads_a_full_state_dict_and_matches_the_library(random_lpips_weights, pair):
    import lpips

    ref, test = pair
    metric = LPIPSMetric(random_lpips_weights)
    assert metric.weights_form == "full"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        direct = lpips.LPIPS(net="alex", pretrained=False, pnet_rand=True, verbose=False)
    direct.load_state_dict(torch.load(random_lpips_weights, weights_only=True))
    with torch.no_grad():
        expected = float(direct.eval()(_tensor(test), _tensor(ref), normalize=True))
    assert metric(ref, test) == pytest.approx(expected, rel=1e-5)
    assert metric(ref, test) > 0
    assert metric(ref, ref) == pytest.approx(0.0, abs=1e-6)


def test_lpips_accepts_torchvision_alexnet_weights(tmp_path, pair):
    torch.manual_seed(4)
    alexnet = torchvision.models.alexnet(weights=None)
    path = tmp_path / "alexnet.pth"
    torch.save(alexnet.state_dict(), path)
    metric = LPIPSMetric(path)
    assert metric.weights_form == "torchvision-backbone"
    assert torch.equal(metric.model.net.slice1[0].weight, alexnet.features[0].weight)
    assert torch.equal(metric.model.net.slice5.get_submodule("10").bias, alexnet.features[10].bias)
    ref, test = pair
    assert np.isfinite(metric(ref, test))


def test_dists_loads_full_and_torchvision_forms(random_dists_weights, tmp_path, pair):
    ref, test = pair
    metric = DISTSMetric(random_dists_weights)
    assert metric.weights_form == "full"
    direct = build_dists_module()
    direct.load_state_dict(torch.load(random_dists_weights, weights_only=True))
    with torch.no_grad():
        expected = float(direct.eval()(_tensor(ref), _tensor(test)))
    # float32 sums of the same weights may run in another order (threads): 1e-5 was hit exactly once
    assert metric(ref, test) == pytest.approx(expected, rel=1e-4)
    assert metric(ref, ref) == pytest.approx(0.0, abs=1e-5)

    torch.manual_seed(5)
    vgg = torchvision.models.vgg16(weights=None)
    path = tmp_path / "vgg16.pth"
    torch.save(vgg.state_dict(), path)
    from_vgg = DISTSMetric(path)
    assert from_vgg.weights_form == "torchvision-backbone"
    assert torch.equal(from_vgg.model.stage5.get_submodule("28").weight, vgg.features[28].weight)


def test_wrong_missing_or_unsafe_weights_fail_with_a_message(tmp_path, random_dists_weights):
    with pytest.raises(WeightsError, match="not found"):
        LPIPSMetric(tmp_path / "nope.pth")
    with pytest.raises(WeightsError, match="does not look like LPIPS"):
        LPIPSMetric(random_dists_weights)
    unsafe = tmp_path / "pickled.pth"
    torch.save({"weight": torch.zeros(1), "extra": NotATensor()}, unsafe)  # unpickling would run code
    with pytest.raises(WeightsError, match="weights_only"):
        DISTSMetric(unsafe)
    bad_shape = tmp_path / "bad_shape.pth"
    state = torch.load(random_dists_weights, weights_only=True)
    state["alpha"] = torch.zeros(3)
    torch.save(state, bad_shape)
    with pytest.raises(WeightsError, match="alpha"):
        DISTSMetric(bad_shape)


def test_suite_without_weights_reports_the_learned_metrics_as_skipped(pair):
    suite = MetricSuite.from_paths()
    status = suite.status()
    assert status["lpips"]["status"] == "skipped" and "--lpips-weights" in status["lpips"]["reason"]
    assert status["dists"]["status"] == "skipped" and "--dists-weights" in status["dists"]["reason"]
    assert status["psnr"]["status"] == status["haarpsi"]["status"] == "computed"
    values, _ = suite.measure(*pair)
    assert values["lpips"] is None and values["dists"] is None  # never a made-up number
    assert np.isfinite(values["haarpsi"]) and np.isfinite(values["gmsd"])


def test_suite_with_weights_computes_them(random_lpips_weights, random_dists_weights, pair):
    suite = MetricSuite.from_paths(random_lpips_weights, random_dists_weights)
    values, notes = suite.measure(*pair)
    assert np.isfinite(values["lpips"]) and np.isfinite(values["dists"])
    assert suite.status()["lpips"]["weights"] == str(random_lpips_weights)
    assert notes == []
