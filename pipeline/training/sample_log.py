"""``OUTPUT/samples/rank-NNN.jsonl``: which samples each rank trained on, one line per step
(``{"keys": [...], "step": 12}``, the keys of all micro-batches of that update in order).

Written when ``data.sample_log`` is on, for audits and for checking that a resumed run sees the
same samples as an uninterrupted one. The file is kept exactly like ``metrics.jsonl``
(:class:`pipeline.training.metrics.MetricsLog`: appended and flushed locally, rewritten at
checkpoints on object stores, lines after the resumed step dropped).
"""

from __future__ import annotations

from pipeline.training.metrics import MetricsLog
from pipeline.training.paths import output_path

SAMPLES_DIR = "samples"


def sample_log_name(rank: int) -> str:
    return f"{SAMPLES_DIR}/rank-{rank:03d}.jsonl"


def sample_log_path(output_uri: str, rank: int) -> str:
    return output_path(output_uri, sample_log_name(rank))


def open_sample_log(output_uri: str, rank: int, keep_until_step: int) -> MetricsLog:
    """The rank's sample log; write ``{"step": step, "keys": keys}`` once per step."""
    return MetricsLog(output_uri, keep_until_step, name=sample_log_name(rank))
