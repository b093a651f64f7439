"""Turn a trained model into a ``save_pretrained`` directory the encode/decode jobs load as is."""

from __future__ import annotations

import torch

from sprdiff import SPRDiff


@torch.no_grad()
def export_model(model: SPRDiff, destination: str, rate_id: int | None = None) -> str:
    """Recompute the entropy tables, stamp the rate id, write ``config.json`` + weights.

    Returns the new model fingerprint (what every record it encodes will carry).
    """
    model.eval()
    model.entropy.update()  # integer CDF tables from the trained parameters
    if rate_id is not None:
        model.config = model.config.replace(rate_id=rate_id)
    model.invalidate_fingerprint()
    model.save_pretrained(destination)
    return model.fingerprint
