"""The tiny model end to end: shapes, exact latents, determinism, errors, training outputs."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from sprdiff import BitstreamError, SPRDiff, bitstream
from sprdiff.bitstream import read_header
from sprdiff.evaluation import psnr


def _crop(img: np.ndarray, h: int, w: int) -> np.ndarray:
    return np.ascontiguousarray(img[:h, :w])


def test_every_component_is_present(tiny_model):
    m = tiny_model
    names = {n for n, _ in m.named_modules()}
    assert any("lora_A" in n for n in names if n.startswith("vae.encoder."))  # E_vae LoRA
    assert not any("lora_" in n for n in names if n.startswith("vae.decoder."))  # D_vae frozen, no LoRA
    assert any("lora_A" in n for n in names if n.startswith("unet."))  # UNet LoRA
    assert any("attn2" in n for n in names if n.startswith("unet."))  # cross-attention takes F_s
    for part in ("distortion.g_a", "distortion.g_s", "dino", "fusion.n3", "fusion.n5", "fusion.mixer",
                 "latent_encoder", "latent_decoder", "entropy.codec", "transform", "projector",
                 "semantic_projection"):
        assert part in names, part
    lora = [m for n, m in m.named_modules() if n.endswith("to_q") and n.startswith("unet.")][0]
    assert lora.r["default"] == 32
    vae_lora = [m for n, m in m.named_modules() if n.endswith("conv1") and n.startswith("vae.encoder.")][0]
    assert vae_lora.r["default"] == 16


@pytest.mark.parametrize("h,w", [(1, 1), (1, 130), (65, 1), (37, 53), (64, 64), (100, 200)])
def test_any_size_round_trips_to_the_exact_original_size(tiny_model, sample_images, h, w):
    img = _crop(sample_images["coffee"], h, w)
    [rec] = tiny_model.compress([img])
    header, _ = read_header(rec)
    assert (header.width, header.height) == (w, h)
    [out] = tiny_model.decompress([rec])
    assert out.shape == (h, w, 3) and out.dtype == np.uint8


def test_quantized_latents_round_trip_exactly(tiny_model, sample_images):
    img = _crop(sample_images["chelsea"], 200, 300)
    enc = tiny_model.encode_image(img)
    assert enc.y_hat.abs().max() > 0.5  # the code carries information, not just the means
    [rec] = tiny_model.compress([img])
    _, y_hat = tiny_model.decode_latents(rec)
    assert torch.equal(y_hat, enc.y_hat)


def test_bytes_depend_on_content(tiny_model, sample_images):
    a = _crop(sample_images["astronaut"], 128, 128)
    b = _crop(sample_images["coffee"], 128, 128)
    ra, rb = tiny_model.compress([a, b])
    assert ra != rb


def test_bytes_do_not_depend_on_the_batch(tiny_model, sample_images):
    imgs = [_crop(sample_images[k], 96 + 16 * i, 128) for i, k in enumerate(sample_images)]
    alone = [tiny_model.compress([im])[0] for im in imgs]
    together = tiny_model.compress(imgs)
    reversed_ = tiny_model.compress(imgs[::-1])[::-1]
    with_others = tiny_model.compress([imgs[1], imgs[0], imgs[1]])
    assert alone == together == reversed_
    assert with_others == [alone[1], alone[0], alone[1]]


def test_decoding_is_deterministic(tiny_model, sample_images):
    recs = tiny_model.compress([_crop(sample_images["astronaut"], 128, 192)])
    first = tiny_model.decompress(recs)[0]
    again = tiny_model.decompress(recs)[0]
    other = tiny_model.compress([_crop(sample_images["coffee"], 128, 192)])
    in_call = tiny_model.decompress(other + recs + other)
    assert np.array_equal(first, again)
    assert np.array_equal(first, in_call[1])
    batched = tiny_model.decompress(recs + recs, batch_size=2)  # opt-in speed: at most one level off
    assert all(np.abs(first.astype(int) - x).max() <= 1 for x in batched)


_ENCODE_SCRIPT = textwrap.dedent("""
    import sys, torch, numpy as np
    from skimage import data
    torch.set_num_threads(int(sys.argv[1]))
    from sprdiff import SPRDiff
    m = SPRDiff.from_pretrained("tiny")
    img = np.ascontiguousarray(data.astronaut()[:192, :160])
    sys.stdout.buffer.write(m.compress([img])[0])
""")


def _encode_in_subprocess(threads: int) -> bytes:
    out = subprocess.run([sys.executable, "-c", _ENCODE_SCRIPT, str(threads)], check=True, capture_output=True)
    return out.stdout


def test_bytes_do_not_depend_on_thread_count_or_process(tiny_model, sample_images):
    one, two = _encode_in_subprocess(1), _encode_in_subprocess(2)
    here = tiny_model.compress([_crop(sample_images["astronaut"], 192, 160)])[0]
    assert one == two == here
    # ...and a record written by another process decodes here.
    assert tiny_model.decompress([one])[0].shape == (192, 160, 3)


def test_damaged_records_raise_the_library_error(tiny_model, sample_images):
    [rec] = tiny_model.compress([_crop(sample_images["coffee"], 64, 64)])
    flipped = bytearray(rec)
    flipped[len(rec) // 2] ^= 0x01
    cases = {
        "corrupt": bytes(flipped),
        "truncated": rec[:-7],
        "future_version": rec[:1] + bytes([bitstream.FORMAT_VERSION + 1]) + rec[2:],
    }
    for status, bad in cases.items():
        with pytest.raises(BitstreamError) as e:
            tiny_model.decompress([rec, bad])
        assert e.value.status == status, (status, str(e.value))


def test_records_of_another_model_are_refused(tiny_model, sample_images):
    other = SPRDiff.from_pretrained("tiny")
    with torch.no_grad():
        other.transform[0].bias.add_(1.0)
    other.invalidate_fingerprint()
    assert other.fingerprint != tiny_model.fingerprint
    [rec] = other.compress([_crop(sample_images["coffee"], 64, 64)])
    with pytest.raises(BitstreamError) as e:
        tiny_model.decompress([rec])
    assert e.value.status in ("model_mismatch", "corrupt")  # tag differs, or the keyed CRC catches it
    assert "different model" in str(e.value)


def test_wrong_input_type_is_a_programmer_error(tiny_model):
    with pytest.raises(TypeError, match="uint8"):
        tiny_model.compress([np.zeros((8, 8, 3), dtype=np.float32)])
    with pytest.raises(TypeError, match="load_image"):
        tiny_model.compress([np.zeros((8, 8), dtype=np.uint8)])


def test_forward_returns_what_training_needs(tiny_model):
    x = torch.rand(2, 3, 64, 128)
    out = tiny_model(x)
    assert out["x_hat"].shape == x.shape and out["x_bar"].shape == x.shape
    assert out["likelihoods"]["y"].shape[:2] == (2, tiny_model.config.latent_channels)
    assert set(out["likelihoods"]) == {"y", "z"}
    assert all(((v > 0) & (v <= 1)).all() for v in out["likelihoods"].values())


def test_frozen_and_trainable_parts(tiny_model):
    trainable = {n for n, p in tiny_model.named_parameters() if p.requires_grad}
    assert trainable, "nothing to train"
    for n in trainable:
        assert not n.startswith(("vae.", "unet.", "dino.", "distortion.")) or "lora_" in n, n
    assert any(n.startswith("vae.encoder.") for n in trainable)
    assert not any(n.startswith(("vae.decoder.", "dino.", "distortion.")) for n in trainable)


def test_colour_correction_adds_a_map_and_a_grid_to_the_same_code(tiny_model, sample_images):
    image = _crop(sample_images["astronaut"], 96, 128)
    [with_map] = tiny_model.compress([image])
    [without] = tiny_model.compress([image], colour_correction=False)
    header, strings = tiny_model.parse(with_map)[0], bitstream.unpack(with_map, tiny_model.fingerprint_bytes, 1)[1]
    assert header.version == 4 and header.colour_map is not None and header.offset_grid is not None
    assert tiny_model.decompress([with_map])[0].shape == image.shape
    assert read_header(without)[0].version == 4 and read_header(without)[0].colour_map is None
    assert strings == bitstream.unpack(without, tiny_model.fingerprint_bytes, 1)[1]  # the latent code is untouched
    gain = psnr(image, tiny_model.decompress([with_map])[0]) - psnr(image, tiny_model.decompress([without])[0])
    assert gain > 0.5, f"the map was fitted to lower the error, gained {gain:.2f} dB"


def test_the_encoder_returns_each_record_with_its_header(tiny_model, sample_images):
    images = [_crop(sample_images["astronaut"], 96, 128), _crop(sample_images["coffee"], 64, 64)]
    records = tiny_model.encode(images)
    assert [r.data for r in records] == tiny_model.compress(images)
    for record in records:
        header, _ = read_header(record.data)
        assert record.header == header  # what a parse would say, without the parse
        assert record.num_bytes == len(record.data) == record.latent_bytes + record.container_bytes


def test_batched_records_decode_alone_in_another_process_and_match_single_encoding(tiny_model, sample_images):
    images = [_crop(sample_images[name], 128, 192) for name in ("astronaut", "coffee", "chelsea")]
    images.append(_crop(sample_images["astronaut"], 64, 64))  # another padded size: its own batch
    single = tiny_model.compress(images)
    batched = tiny_model.compress(images, batch_size=4)
    assert tiny_model.compress(images, batch_size=4) == batched  # a rerun reproduces the bytes
    # the same torch thread count as here: float reductions (hence the last bit of a pixel) follow it
    script = ("import sys, numpy as np, torch; from sprdiff import SPRDiff; torch.set_num_threads(int(sys.argv[2])); "
              "m = SPRDiff.from_pretrained('tiny'); records = np.load(sys.argv[1], allow_pickle=True); "
              "sys.stdout.buffer.write(b''.join(m.decompress([bytes(r)])[0].tobytes() for r in records))")
    path = Path(tempfile.mkdtemp()) / "records.npy"
    np.save(path, np.array(batched, dtype=object), allow_pickle=True)
    out = subprocess.run([sys.executable, "-c", script, str(path), str(torch.get_num_threads())],
                         capture_output=True, check=True).stdout
    here = tiny_model.decompress(batched, batch_size=4)
    assert out == b"".join(image.tobytes() for image in tiny_model.decompress(batched))
    for image, a, b, c in zip(images, tiny_model.decompress(single), tiny_model.decompress(batched), here):
        assert abs(psnr(image, a) - psnr(image, b)) <= 0.05 and abs(psnr(image, b) - psnr(image, c)) <= 0.05
