"""The modules Ray's CPU tasks and the part writer unpickle never import torch: each new worker
process would otherwise spend about 2 s of CPU importing it (webdataset pulls it in too), taken
from the codec actors on a small machine (the jobs' fixed cost, bench/bench_pipeline.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LIGHT = ["pipeline.encode_stages", "pipeline.decode_stages", "pipeline.part_writer", "pipeline.ray_runner",
         "pipeline.config", "pipeline.inputs", "sprdiff.model_store"]


@pytest.mark.parametrize("module", LIGHT)
def test_task_side_modules_import_without_torch(module):
    code = (f"import sys, {module}; "
            "print(','.join(m for m in ('torch', 'diffusers', 'webdataset') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "", f"importing {module} loads {done.stdout.strip()}"
