"""Turn a trained model into stored weights the encode/decode jobs load, without overwriting any.

Export writes the weights once under their fingerprint and moves a pointer to them::

    OUTPUT/models/<fingerprint>/{config.json,model.safetensors,README.md}   never overwritten
    OUTPUT/model/pointer.json                                               -> ../models/<fingerprint>

``--model OUTPUT/model`` keeps meaning "the latest export" (``from_pretrained`` follows the pointer
and checks the fingerprint), while every earlier export's files stay byte for byte where they
were, so archives encoded with them keep decoding after a retrain.
"""

from __future__ import annotations

import json

import torch

from pipeline.training.paths import output_path
from sprdiff import SPRDiff
from sprdiff.model_card import ModelCard
from sprdiff.model_pointer import write_pointer
from sprdiff.model_store import store_model

MODELS_DIR = "models"  # OUTPUT/models/<fingerprint>/: every export of a run, by fingerprint
POINTER_DIR = "model"  # OUTPUT/model: a pointer to the latest export


@torch.no_grad()
def export_model(model: SPRDiff, output_uri: str, rate_id: int | None = None, *, parent: str | None = None,
                 training_data: str | None = None, steps: int | None = None, config: dict | None = None,
                 pointer: str = POINTER_DIR) -> str:
    """Recompute the entropy tables, stamp the rate id, store the weights under
    ``<output_uri>/models/<fingerprint>/`` with a model card and point ``<output_uri>/<pointer>``
    (default ``model``) at them.

    Returns the new model fingerprint (what every record it encodes will carry).
    """
    model.eval()
    model.entropy.update()  # integer CDF tables from the trained parameters
    if rate_id is not None:
        model.config = model.config.replace(rate_id=rate_id)
    model.invalidate_fingerprint()
    fingerprint = model.fingerprint
    card = ModelCard(model_id=model.config.model_id, fingerprint=fingerprint, parent=parent,
                     training_data=training_data, steps=steps,
                     config=config if config is not None else json.loads(model.config.to_json()))
    store_model(model, output_path(output_uri, MODELS_DIR), card=card)
    write_pointer(output_path(output_uri, pointer), f"../{MODELS_DIR}/{fingerprint}", fingerprint)
    return fingerprint
