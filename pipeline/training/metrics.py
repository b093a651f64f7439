"""Per-step metrics: ``metrics.jsonl`` under the run's output URI and a progress line.

Local outputs get one appended, flushed line per step (``tail -f`` works). Object stores
cannot append, so there the file is rewritten at every checkpoint and at the end. A resumed
run first drops the lines after the checkpoint it resumes from, so the file holds each step
exactly once.
"""

from __future__ import annotations

import json
import time

import fsspec
from fsspec.implementations.local import LocalFileSystem

METRICS_NAME = "metrics.jsonl"


class MetricsLog:
    def __init__(self, output_uri: str, keep_until_step: int):
        self.fs, self.path = fsspec.core.url_to_fs(f"{output_uri.rstrip('/')}/{METRICS_NAME}")
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

    def write(self, record: dict) -> None:
        line = json.dumps(record, sort_keys=True) + "\n"
        if self._file is not None:
            self._file.write(line)
            self._file.flush()
        else:
            self.lines.append(line)

    def sync(self) -> None:
        """Make the stored file complete up to now (object stores: rewrite it)."""
        if self._file is None:
            self.fs.pipe_file(self.path, "".join(self.lines).encode())

    def close(self) -> None:
        self.sync()
        if self._file is not None:
            self._file.close()
            self._file = None


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
