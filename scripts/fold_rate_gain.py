"""A one-rate model that codes like ``MODEL`` at a scalar gain: the starting point of a separate
model for one rate point, to compare with one model trained at several (docs/demo-model.md).

    fold_rate_gain.py MODEL GAIN OUTPUT_DIR

E_l's last convolution is multiplied by GAIN (the entropy model codes GAIN·Y, as rate points start
in sprdiff.rates.add_rate_points), and the first convolutions of D_l and T by 1/GAIN (both are
linear in Ŷ there), so the model decodes what it codes; nothing else changes.
"""

from __future__ import annotations

import sys

import torch

from sprdiff import SPRDiff


def fold_gain(model: SPRDiff, gain: float) -> None:
    if model.config.rates > 1:
        raise ValueError(f"{model.model_id} already has rate points: give a one-rate model")
    with torch.no_grad():
        last = model.latent_encoder[-1]
        last.weight.mul_(gain)
        last.bias.mul_(gain)
        for first in (model.latent_decoder[0], model.transform[0]):
            first.weight.div_(gain)
    model.entropy.invalidate_tables()
    model.invalidate_fingerprint()


def main(source: str, gain: str, output: str) -> None:
    model = SPRDiff.from_pretrained(source)
    fold_gain(model, float(gain))
    model.save_pretrained(output)
    print(f"{output}: {source} at gain {float(gain)}, fingerprint {model.fingerprint[:16]}")


if __name__ == "__main__":
    main(*sys.argv[1:4])
