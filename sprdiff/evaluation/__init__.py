"""Rate–distortion–perception evaluation: metrics, classical baselines at matched bytes, reports.

Pure functions and plain classes, no Ray. ``sprdiff eval`` (jobs/eval_commands.py) drives
:func:`run_evaluation`; docs/evaluation.md states the protocol.
"""

from importlib import import_module

# Each name is imported from its module on first use (PEP 562), so importing one light module of
# this package (the baselines' codec table, for the CLI's parser) does not load torch and piq.
_HOMES = {"CODECS": "baselines", "DEFAULT_SCALES": "baselines", "BaselineResult": "baselines",
          "encode_at_budget": "baselines", "write_comparison": "compare", "bits_per_pixel": "metrics",
          "gmsd": "metrics", "haarpsi": "metrics", "ms_ssim": "metrics", "psnr": "metrics",
          "EvalOptions": "run", "evaluate": "run", "MetricSuite": "suite", "run_evaluation": "workflow"}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_HOMES[name]}"), name)
