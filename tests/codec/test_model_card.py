"""Model cards round-trip through Markdown, locally and on S3."""

import pytest

from sprdiff.model_card import CARD_NAME, ModelCard, read_model_card, write_model_card

FINGERPRINT = "ab" * 32


def test_card_round_trips_through_its_markdown(tmp_path):
    card = ModelCard(model_id="demo", fingerprint=FINGERPRINT, parent="cd" * 32, training_data="s3://b/shards",
                     steps=1500, config={"lr": 1e-4}, evaluation={"psnr": 23.7})
    path = write_model_card(str(tmp_path), card)
    text = (tmp_path / CARD_NAME).read_text()
    assert path.endswith(CARD_NAME) and FINGERPRINT in text and "1,500" in text and "psnr: 23.7" in text
    assert read_model_card(str(tmp_path)) == card


def test_missing_card_is_none_and_a_bad_fingerprint_is_refused(tmp_path):
    assert read_model_card(str(tmp_path)) is None
    with pytest.raises(ValueError, match="64 hex digits"):
        ModelCard(model_id="x", fingerprint="abc")
    (tmp_path / CARD_NAME).write_text("# just prose\n")
    with pytest.raises(ValueError, match="json block"):
        read_model_card(str(tmp_path))
