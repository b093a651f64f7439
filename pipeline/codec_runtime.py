"""How a codec actor runs the model: batch, precision, tiling, compilation.

None of these change the byte format: any record decodes with any of them. Batch and precision
do change which bytes (or pixels) come out, as a device change would; the determinism contract
in ``docs/codec.md`` says how.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from sprdiff.errors import SPRDiffError
from sprdiff.run_settings import DEFAULT_TILE_SIZE, check_precision_name, check_tile_size

In, Out = TypeVar("In"), TypeVar("Out")


@dataclass(frozen=True)
class CodecRuntime:
    batch_size: int = 1  # images per neural call (a codec group, pipeline.codec_groups)
    precision: str | None = None  # fp32 | bf16; None: bf16 on a CUDA device that runs it, fp32 elsewhere
    tile_size: int | None = DEFAULT_TILE_SIZE  # px; images with a larger padded side run on tiles
    compile: bool = False  # torch.compile the UNet and VAE decoder (long GPU jobs; compiles per input size)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {self.batch_size}")
        if self.precision is not None:
            check_precision_name(self.precision)
        check_tile_size(self.tile_size)

    def precision_on(self, device) -> str:
        from sprdiff.precision import default_precision

        return self.precision or default_precision(device)

    def check(self, device) -> None:
        """Refuse, with what to do instead, a precision ``device`` cannot run (before any work)."""
        from sprdiff.precision import check_precision

        check_precision(self.precision_on(device), device)

    def prepare(self, model):
        """A loaded model made ready for this runtime (channels-last on CUDA, compiled if asked)."""
        from sprdiff.precision import prepare_for_inference

        self.check(model.device)
        return prepare_for_inference(model, compile_modules=self.compile)

    def load(self, model, *, device: str = "cpu", threads: int | None = None):
        """``model`` (a name, directory or URI, or an already loaded ``SPRDiff``) ready to run."""
        from sprdiff import SPRDiff

        self.check(device)
        use_threads(threads)
        if isinstance(model, str):
            model = SPRDiff.from_pretrained(model, device=device)
        return self.prepare(model)


def use_threads(threads: int | None) -> None:
    """Torch's intra-op threads for this process (None: leave them)."""
    import torch

    if threads and threads != torch.get_num_threads():
        torch.set_num_threads(threads)


def each_result(call: Callable[[list[In]], list[Out]],
                items: Sequence[In]) -> list[tuple[Out | None, SPRDiffError | None]]:
    """``call`` on all ``items`` at once; if it raises a codec error, on each alone, so one bad image or
    record costs only its own row. One ``(result, None)`` or ``(None, error)`` per item, in order."""
    try:
        return [(result, None) for result in call(list(items))]
    except SPRDiffError:
        pass
    results: list[tuple[Out | None, SPRDiffError | None]] = []
    for item in items:
        try:
            [result] = call([item])
        except SPRDiffError as e:
            results.append((None, e))
        else:
            results.append((result, None))
    return results
