"""Which of a model's rate points codes a record: ``--rate`` and ``--target-bpp`` checked against the
model's config (``sprdiff.rates`` holds the gains themselves).

Only the config is needed, so this imports no torch: a command or a job's driver refuses a rate the
model lacks, or a budget that is no positive number, in a fraction of a second, before it builds the
model or lists anything (``sprdiff.presets.read_config`` reads a saved model's config alone).
"""

from __future__ import annotations


def rate_ids(config) -> tuple[int, ...]:
    """The rate ids a model with ``config`` codes at: its one ``rate_id``, or 0 .. rates - 1."""
    return tuple(range(config.rates)) if config.rates > 1 else (config.rate_id,)


def describe(config) -> str:
    ids = rate_ids(config)
    return f"rate {ids[0]}" if len(ids) == 1 else f"rates {', '.join(map(str, ids))}"


def check_rate(config, rate: int | None) -> int:
    """The rate id to code at: ``rate``, or the model's default when None. A rate the model does not
    have is refused with a message naming the ones it has."""
    if rate is None:
        return config.rate_id
    if isinstance(rate, bool) or not isinstance(rate, int) or rate not in rate_ids(config):
        raise ValueError(f"model {config.model_id!r} has no rate {rate!r}: it codes at "
                         f"{describe(config)} (choose one with --rate, or a byte budget with --target-bpp)")
    return rate


def check_target_bpp(config, value: float | None) -> float | None:
    """A byte budget in bits per pixel must be a positive finite number; the message of a refused one
    names the model's rates."""
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not number > 0 or number == float("inf"):
        raise ValueError(f"target bpp must be a positive number of bits per pixel, got {value!r} (model "
                         f"{config.model_id!r} codes at {describe(config)}; --rate chooses one directly)")
    return number


def budget_bytes(target_bpp: float, width: int, height: int) -> int:
    """The most bytes a record of a width x height image may have within ``target_bpp``."""
    return int(target_bpp * width * height // 8)


def budget_warning(num_bytes: int, width: int, height: int, rate: int, target_bpp: float | None) -> str | None:
    """What a record above its ``target_bpp`` budget (no rate fitted) is flagged with, else None."""
    if target_bpp is None or num_bytes <= budget_bytes(target_bpp, width, height):
        return None
    return f"no rate fits {target_bpp:g} bpp: coded at rate {rate}, {8 * num_bytes / (width * height):.4f} bpp"
