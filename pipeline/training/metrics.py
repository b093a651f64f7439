"""Per-step metrics: ``metrics.jsonl`` under the run's output URI, TensorBoard event files and a
progress line.

Local outputs get one appended, flushed line per step (``tail -f`` works). Object stores
cannot append, so there the file is rewritten at every checkpoint and at the end. A resumed
run first drops the lines after the checkpoint it resumes from, so the file holds each step
exactly once.

With ``tensorboard`` the same records go to ``OUTPUT/tensorboard/`` as scalars (tensorboardX):
``train/<name>`` for the step's metrics, ``val/<name>`` for its ``val_<name>`` validation scores.
Event files are written locally (on object stores in a temporary folder uploaded at every
checkpoint and at the end); a resumed run starts a new file whose ``purge_step`` makes
TensorBoard drop the killed run's events after the checkpoint.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path

import fsspec
from fsspec.implementations.local import LocalFileSystem

from pipeline.training.paths import output_path

METRICS_NAME = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
NOT_SCALARS = ("step", "time")  # the x axis and the wall time of every scalar
VALIDATION_PREFIX = "val_"


class MetricsLog:
    """One JSON line per step in ``OUTPUT/<name>`` (``metrics.jsonl``; also ``validation.jsonl`` and the
    sample logs), optionally mirrored to TensorBoard."""

    def __init__(self, output_uri: str, keep_until_step: int, name: str = METRICS_NAME, tensorboard: bool = False):
        self.fs, self.path = fsspec.core.url_to_fs(output_path(output_uri, name))
        self.is_local = isinstance(self.fs, LocalFileSystem)
        self.lines: list[str] = []
        if self.fs.exists(self.path):
            text = self.fs.cat_file(self.path).decode()
            self.lines = [line + "\n" for line in text.splitlines()
                          if line.strip() and json.loads(line)["step"] <= keep_until_step]
        self._file = None
        if self.is_local:
            self.fs.makedirs(self.fs._parent(self.path), exist_ok=True)
            with open(self.path, "w") as f:
                f.writelines(self.lines)
            self._file = open(self.path, "a")  # kept open for the run, closed in close()
        self.tensorboard = TensorBoardLog(output_uri, keep_until_step + 1) if tensorboard else None

    def write(self, record: dict) -> None:
        line = json.dumps(record, sort_keys=True) + "\n"
        if self._file is not None:
            self._file.write(line)
            self._file.flush()
        else:
            self.lines.append(line)
        if self.tensorboard is not None:
            self.tensorboard.write(record)

    def sync(self) -> None:
        """Make the stored files complete up to now (object stores: rewrite or upload them)."""
        if self._file is None:
            self.fs.pipe_file(self.path, "".join(self.lines).encode())
        if self.tensorboard is not None:
            self.tensorboard.sync()

    def close(self) -> None:
        self.sync()
        if self._file is not None:
            self._file.close()
            self._file = None
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None


class TensorBoardLog:
    """Every finite number of a step record as a TensorBoard scalar at that step."""

    def __init__(self, output_uri: str, purge_step: int):
        from tensorboardX import SummaryWriter

        self.fs, self.root = fsspec.core.url_to_fs(output_path(output_uri, TENSORBOARD_DIR))
        self._staging = None
        if isinstance(self.fs, LocalFileSystem):
            logdir = self.root
        else:  # written here, uploaded by sync()
            self._staging = tempfile.TemporaryDirectory(prefix="sprdiff-tb-")
            logdir = self._staging.name
        # purge_step: TensorBoard drops events at or after it from the files written before this one
        self.writer = SummaryWriter(logdir=logdir, purge_step=purge_step)
        self.logdir = Path(logdir)

    def write(self, record: dict) -> None:
        step, walltime = record["step"], record.get("time")
        for name, value in record.items():
            if name in NOT_SCALARS or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if not math.isfinite(value):
                continue
            tag = f"val/{name[len(VALIDATION_PREFIX):]}" if name.startswith(VALIDATION_PREFIX) else f"train/{name}"
            self.writer.add_scalar(tag, value, step, walltime=walltime)

    def sync(self) -> None:
        self.writer.flush()
        self._upload()

    def close(self) -> None:
        self.writer.close()
        self._upload()
        if self._staging is not None:
            self._staging.cleanup()

    def _upload(self) -> None:
        if self._staging is not None:  # whole files: event files of a run are small
            self.fs.makedirs(self.root, exist_ok=True)
            for file in sorted(self.logdir.iterdir()):
                self.fs.put_file(str(file), f"{self.root}/{file.name}")


class Progress:
    """A one-line summary every ``every`` steps, averaged over those steps."""

    def __init__(self, stage: int, total_steps: int, every: int, start_step: int):
        self.stage, self.total, self.every = stage, total_steps, every
        self.start_step = start_step
        self.window: list[dict] = []
        self.started = time.monotonic()

    def update(self, record: dict) -> str | None:
        self.window.append(record)
        step = record["step"]
        if step % self.every and step != self.total:
            return None
        mean = {k: sum(r[k] for r in self.window) / len(self.window)
                for k in ("loss", "bpp", "samples_per_s") if k in record}
        self.window = []
        elapsed = time.monotonic() - self.started
        done = step - self.start_step
        eta = elapsed / done * (self.total - step) if done else 0.0
        return (f"stage {self.stage} step {step}/{self.total} | loss {mean['loss']:.4f} | bpp {mean['bpp']:.4f} | "
                f"lr {record['lr']:.1e} | {mean['samples_per_s']:.2f} samples/s | eta {_duration(eta)}")


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
