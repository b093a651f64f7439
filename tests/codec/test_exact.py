"""The exact integer path for entropy parameters: same numbers on any thread count, batch or device."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from compressai.layers import CheckerboardMaskedConv2d
from torch import nn

from sprdiff.exact import ACT_BITS, ExactNetwork, to_grid


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.ConvTranspose2d(8, 12, 5, stride=2, padding=2, output_padding=1), nn.ReLU(),
        CheckerboardMaskedConv2d(12, 12, kernel_size=5, padding=2), nn.ReLU(),
        nn.Conv2d(12, 6, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(6, 4, 1))


def test_exact_network_approximates_the_float_network():
    net = _net()
    with torch.no_grad():
        net[2].weight.mul_(net[2].mask)
        x = torch.randn(2, 8, 6, 10) * 3
        ref = net(x)
    out = ExactNetwork(net)(x)
    assert out.shape == ref.shape and out.dtype == torch.float64
    assert torch.allclose(out.float(), ref, atol=0.05), (out.float() - ref).abs().max()
    assert torch.equal(out, to_grid(out))  # outputs live on the 1/256 grid


def test_exact_network_ignores_float_noise_batch_and_threads():
    exact = ExactNetwork(_net())
    x = to_grid(torch.randn(3, 8, 6, 10) * 3)
    ref = exact(x)
    ulp_up = torch.nextafter(x, torch.full_like(x, float("inf")))
    assert torch.equal(exact(ulp_up), ref)  # 1 ULP of float noise on the inputs changes nothing
    assert torch.equal(exact(x.float()), ref)  # nor float32 inputs
    assert torch.equal(exact(x[1:2]), ref[1:2])  # nor the batch it runs in
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert torch.equal(exact(x), ref)
    finally:
        torch.set_num_threads(threads)


def test_unsupported_layers_are_refused():
    with pytest.raises(NotImplementedError, match="exact integer form"):
        ExactNetwork(nn.Sequential(nn.Conv2d(2, 2, 1), nn.GELU()))


_DECODE_SCRIPT = textwrap.dedent("""
    import sys, torch
    torch.set_num_threads(int(sys.argv[1]))
    from sprdiff import SPRDiff
    m = SPRDiff.from_pretrained("tiny")
    _, y_hat = m.decode_latents(sys.stdin.buffer.read())
    sys.stdout.buffer.write(y_hat.numpy().tobytes())
""")


def test_decoded_latents_identical_across_processes_and_threads(tiny_model, sample_images):
    img = np.ascontiguousarray(sample_images["chelsea"][:130, :200])
    enc = tiny_model.encode_image(img)
    [rec] = tiny_model.compress([img])
    for threads in (1, 2):
        out = subprocess.run([sys.executable, "-c", _DECODE_SCRIPT, str(threads)], input=rec, check=True,
                             capture_output=True).stdout
        assert out == enc.y_hat.numpy().tobytes(), f"{threads} threads"


def test_means_are_on_the_grid(tiny_model, sample_images):
    # y_hat = symbol + mean, with means exact multiples of 2**-ACT_BITS.
    enc = tiny_model.encode_image(np.ascontiguousarray(sample_images["coffee"][:64, :64]))
    scaled = enc.y_hat.double() * 2**ACT_BITS
    assert torch.equal(scaled, torch.round(scaled))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cpu_and_gpu_decode_identical_latents(sample_images):
    from sprdiff import SPRDiff

    cpu = SPRDiff.from_pretrained("tiny")
    gpu = SPRDiff.from_pretrained("tiny", device="cuda")
    img = np.ascontiguousarray(sample_images["astronaut"][:256, :192])
    [rec_cpu] = cpu.compress([img])
    _, y_cpu = cpu.decode_latents(rec_cpu)
    _, y_gpu = gpu.decode_latents(rec_cpu)
    assert torch.equal(y_cpu, y_gpu.cpu())
