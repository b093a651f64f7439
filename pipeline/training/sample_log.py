"""``OUTPUT/samples/rank-NNN.jsonl``: which samples each rank trained on, one line per step
(``{"step": 12, "keys": [...]}``, the keys of all micro-batches of that update in order).

Written when ``data.sample_log`` is on, for audits and for checking that a resumed run sees the
same samples as an uninterrupted one. Like ``metrics.jsonl``: local files are appended and
flushed every step, object stores get the file rewritten at each checkpoint and at the end, and
a resumed run first drops the lines after the step it resumes from.
"""

from __future__ import annotations

import json

import fsspec
from fsspec.implementations.local import LocalFileSystem

SAMPLES_DIR = "samples"


def sample_log_path(output_uri: str, rank: int) -> str:
    return f"{output_uri.rstrip('/')}/{SAMPLES_DIR}/rank-{rank:03d}.jsonl"


class SampleLog:
    def __init__(self, output_uri: str, rank: int, keep_until_step: int):
        self.fs, self.path = fsspec.core.url_to_fs(sample_log_path(output_uri, rank))
        self.lines: list[str] = []
        if self.fs.exists(self.path):
            self.lines = [line + "\n" for line in self.fs.cat_file(self.path).decode().splitlines()
                          if line.strip() and json.loads(line)["step"] <= keep_until_step]
        self._file = None
        if isinstance(self.fs, LocalFileSystem):
            self.fs.makedirs(self.fs._parent(self.path), exist_ok=True)
            with open(self.path, "w") as f:
                f.writelines(self.lines)
            self._file = open(self.path, "a")  # kept open for the run, closed in close()

    def write(self, step: int, keys: list[str]) -> None:
        line = json.dumps({"step": step, "keys": keys}) + "\n"
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
