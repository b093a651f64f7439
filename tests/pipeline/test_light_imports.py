"""The modules Ray's CPU tasks and the part writer unpickle never import torch: each new worker
process would otherwise spend about 2 s of CPU importing it (webdataset pulls it in too), taken
from the codec actors on a small machine (the jobs' fixed cost, bench/bench_pipeline.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sprdiff import SPRDiff

REPO = Path(__file__).resolve().parents[2]
LIGHT = ["pipeline.encode_stages", "pipeline.decode_stages", "pipeline.part_writer", "pipeline.ray_runner",
         "pipeline.codec_service",  # the codec stage of a job on a codec service runs in tasks
         "pipeline.config", "pipeline.inputs", "sprdiff.model_store"]
MODEL_STACK = ("torch", "piq", "matplotlib", "torchvision", "diffusers", "compressai")


def _loaded_by(code: str, heavy: tuple[str, ...] = MODEL_STACK) -> tuple[str, str]:
    """(the ``heavy`` modules ``code`` left in sys.modules, what it printed before) in a fresh interpreter."""
    code += f"; import sys; print(','.join(m for m in {heavy!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    return lines[-1].strip() if lines else "", "\n".join(lines[:-1])


@pytest.mark.parametrize("module", LIGHT)
def test_task_side_modules_import_without_torch(module):
    loaded, _ = _loaded_by(f"import {module}", ("torch", "diffusers", "webdataset"))
    assert loaded == "", f"importing {module} loads {loaded}"


def test_building_the_cli_parser_loads_no_model_stack():
    """Every ``sprdiff`` command parses its arguments first: the jobs' drivers among them, whose start
    is part of each job's fixed cost (docs/performance.md)."""
    loaded, _ = _loaded_by("import jobs.cli; jobs.cli.build_parser()")
    assert loaded == "", f"building the parser loads {loaded}"


def test_a_job_driver_names_a_saved_model_without_torch():
    loaded, printed = _loaded_by("from sprdiff.model_store import directory_fingerprint; "
                                 "from sprdiff.presets import SHIPPED_MODELS; "
                                 "print(directory_fingerprint(SHIPPED_MODELS['demo']))")
    assert loaded == "", f"hashing a saved model loads {loaded}"
    assert printed == SPRDiff.from_pretrained("demo").fingerprint


@pytest.mark.parametrize("rate, target_bpp, refusal", [
    (3, None, "has no rate 3: it codes at rates 0, 1, 2"),
    (None, -0.02, "positive number of bits per pixel, got -0.02"),
    (2, None, None),
])
def test_a_jobs_rate_or_budget_is_checked_without_the_model_stack(rate, target_bpp, refusal):
    """A job's driver checks ``--rate`` / ``--target-bpp`` against the model's config before listing
    anything (so does ``sprdiff encode``, before building the model): in a fraction of a second, with
    no torch (it took 5-7 s of imports when the check went through sprdiff.loading)."""
    loaded, printed = _loaded_by(
        "from pipeline.config import EncodeJobConfig; from pipeline.encode_job import check_rate_choice\n"
        "try:\n"
        f"    check_rate_choice(EncodeJobConfig(input='in', output='out', model='demo', rate={rate!r}, "
        f"target_bpp={target_bpp!r})); print('accepted')\n"
        "except ValueError as e:\n"
        "    print(e)\n"
        "checked = True")  # _loaded_by appends its own statements to this last line
    assert loaded == "", f"checking a rate loads {loaded}"
    assert (refusal in printed) if refusal else printed == "accepted", printed


def test_a_rate_is_checked_through_a_model_pointer_without_the_model_stack(tmp_path):
    """A pointer is followed to its directory's config.json, not loaded (it used to load the model
    once for the check and once more to code)."""
    from sprdiff.model_pointer import write_pointer
    from sprdiff.presets import SHIPPED_MODELS

    pointer = tmp_path / "current"
    write_pointer(str(pointer), str(SHIPPED_MODELS["demo"]), SPRDiff.from_pretrained("demo").fingerprint)
    loaded, printed = _loaded_by("from sprdiff.presets import read_config; from sprdiff.rate_choice import describe; "
                                 f"print(describe(read_config({str(pointer)!r})))")
    assert loaded == "", f"reading a config through a pointer loads {loaded}"
    assert printed == "rates 0, 1, 2"
