"""Rate–distortion–perception evaluation: metrics, classical baselines at matched bytes, reports.

Pure functions and plain classes, no Ray. ``sprdiff eval`` (jobs/eval_commands.py) drives
:func:`run_evaluation`; docs/evaluation.md states the protocol.
"""

from sprdiff.evaluation.baselines import CODECS, DEFAULT_SCALES, BaselineResult, encode_at_budget
from sprdiff.evaluation.compare import write_comparison
from sprdiff.evaluation.metrics import bits_per_pixel, gmsd, haarpsi, ms_ssim, psnr
from sprdiff.evaluation.run import EvalOptions, evaluate
from sprdiff.evaluation.suite import MetricSuite
from sprdiff.evaluation.workflow import run_evaluation

__all__ = ["CODECS", "DEFAULT_SCALES", "BaselineResult", "EvalOptions", "MetricSuite", "bits_per_pixel",
           "encode_at_budget", "evaluate", "gmsd", "haarpsi", "ms_ssim", "psnr", "run_evaluation",
           "write_comparison"]
