"""bench/gpu_train_check.sh's benchmark runs end to end on the CPU with `tiny`, so the script a GPU
session will run has run before: every arm prints a row and the checkpoint resumes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_gpu_training_benchmark_runs_on_cpu_with_tiny():
    result = subprocess.run([sys.executable, "bench/bench_gpu_train.py", "--model", "tiny", "--device", "cpu",
                             "--crop", "64", "--steps", "1", "--warmup", "1"], cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line.split() for line in result.stdout.splitlines() if line.split()[:1] in (["1"], ["2"])]
    assert [(r[0], r[1]) for r in rows] == [("1", "off"), ("1", "on"), ("2", "off"), ("2", "on")]
    assert all(float(r[2]) > 0 for r in rows)  # s/step
    assert rows[0][-1] == rows[1][-1] and rows[2][-1] == rows[3][-1]  # checkpointing changes no loss
    assert "resumed at step 2 and stepped to 3: ok" in result.stdout
    script = (REPO / "bench" / "gpu_train_check.sh").read_text()
    assert "bench/bench_gpu_train.py --model sd-turbo --device cuda --crop 512" in script
