"""Model cards: the ``README.md`` every exported or stored model directory carries.

A card says what a set of weights is and where it came from, for a person (Markdown) and a
program (the same facts as one JSON block, parsed back by :func:`read_model_card`). Weights are
identified by their fingerprint (``SPRDiff.fingerprint``, the SHA-256 every record carries); the
card never replaces that check, it explains it.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import fsspec

CARD_NAME = "README.md"
_JSON_BLOCK = re.compile(r"```json\n(?P<body>.*?)\n```", re.DOTALL)


@dataclass(frozen=True)
class ModelCard:
    model_id: str
    fingerprint: str  # hex SHA-256 of config and weights
    parent: str | None = None  # fingerprint (or source) of the model these weights were trained from
    training_data: str | None = None  # where the training samples came from (URI, shard manifest)
    steps: int | None = None  # optimizer steps that produced these weights
    config: dict[str, Any] = field(default_factory=dict)  # the training (or model) settings, as JSON
    evaluation: dict[str, Any] | None = None  # summary figures, where an evaluation exists
    notes: str = ""

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[0-9a-f]{64}", self.fingerprint):
            raise ValueError(f"a model card's fingerprint is 64 hex digits (SPRDiff.fingerprint), got "
                             f"{self.fingerprint!r}")

    def to_markdown(self) -> str:
        facts = [("model id", self.model_id), ("fingerprint", self.fingerprint),
                 ("parent model", self.parent or "none (trained from its initial weights)"),
                 ("training data", self.training_data or "not recorded"),
                 ("steps", "not recorded" if self.steps is None else f"{self.steps:,}")]
        lines = [f"# {self.model_id}", "", "SPRDiff model weights. Records encoded with them carry this fingerprint; "
                 "decoding checks it, so keep these files unchanged for as long as any archive uses them.", ""]
        lines += [f"- **{name}**: `{value}`" for name, value in facts]
        if self.evaluation:
            lines += ["", "## Evaluation", ""]
            lines += [f"- {name}: {value}" for name, value in self.evaluation.items()]
        if self.notes:
            lines += ["", self.notes.strip()]
        lines += ["", "## Card as data", "", "```json", json.dumps(asdict(self), indent=1, sort_keys=True), "```", ""]
        return "\n".join(lines)

    @classmethod
    def from_markdown(cls, text: str) -> ModelCard:
        match = _JSON_BLOCK.search(text)
        if match is None:
            raise ValueError("not an SPRDiff model card: it has no ```json block")
        return cls(**json.loads(match.group("body")))


def _card_path(directory: str) -> str:
    return f"{str(directory).rstrip('/')}/{CARD_NAME}"


def write_model_card(directory: str, card: ModelCard) -> str:
    """Write ``card`` as ``<directory>/README.md`` (a local path or any fsspec URI); returns its path."""
    path = _card_path(directory)
    with fsspec.open(path, "w", encoding="utf-8") as f:
        f.write(card.to_markdown())
    return path


def read_model_card(directory: str) -> ModelCard | None:
    """The card in ``directory``, or None if it has none."""
    path = _card_path(directory)
    fs, root = fsspec.core.url_to_fs(path)
    if not fs.exists(root):
        return None
    with fs.open(root, "r", encoding="utf-8") as f:
        return ModelCard.from_markdown(f.read())
