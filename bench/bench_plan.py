"""Planning at scale: peak driver memory and seconds to plan synthetic S3 Inventories, against today's planner.

    .venv/bin/python bench/bench_plan.py [--sizes 1000000 10000000] [--legacy 1000000] [--lookup-rows 100000]

For each size, a synthetic S3 Inventory (Parquet: bucket, key, size; keys in no order, as inventory
data files come) is written, then planned in a fresh process by ``pipeline.inputs.build_plan`` (the
stored plan under a temporary ``_plan/``), which prints its peak RSS (``VmHWM``), its RSS after
imports, and the seconds. The slope is the growth of the peak per million objects between the two
sizes. "Today's planner" is the planner this branch replaces (``pipeline/inputs.py`` at
``LEGACY_COMMIT``, read from git), run in the same way on a listing of the same size: an fsspec
filesystem whose ``find`` returns what s3fs's returns (one info dict per object).

Last, a key lookup: an archive of ``--lookup-rows`` rows (1.5 KB random records, the real part
writer's layout: 16,384 rows per part, row groups of 1,024) written locally, three keys found with
``pipeline.lookup.find``, and the bytes it read (through a counting filesystem) printed against the
archive's size.

Targets (issue 26): at most 50 MB more driver memory per million objects; at 10 M at most 1.5 GiB
peak and 180 s on the 2-core development machine. Figures are noisy on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LEGACY_COMMIT = "4c42234"  # the last commit with the one-WorkShard planner (pipeline/inputs.py, fs.find)

MEASURE = textwrap.dedent("""
    import json, sys, time
    def status_mb(field):
        return int(next(l for l in open("/proc/self/status") if l.startswith(field + ":")).split()[1]) / 1024
    sys.path.insert(0, sys.argv[1])
    import pyarrow, pyarrow.parquet, pyarrow.compute, fsspec  # noqa: E401 (imports before the baseline)
    from pipeline.inputs import PlanRequest, build_plan
    from pipeline.storage import Location
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = status_mb("VmRSS")
    t0 = time.perf_counter()
    plan = build_plan(PlanRequest(input_list=sys.argv[2], rows_per_part=16384), Location.of(sys.argv[3]))
    seconds = time.perf_counter() - t0
    print(json.dumps({"seconds": seconds, "peak_mb": status_mb("VmHWM"), "base_mb": base,
                      "items": plan.info.items, "parts": plan.info.shards}))
""")

LEGACY = textwrap.dedent("""
    import importlib.util, json, sys, time, datetime
    def status_mb(field):
        return int(next(l for l in open("/proc/self/status") if l.startswith(field + ":")).split()[1]) / 1024
    sys.path.insert(0, sys.argv[1])
    import fsspec
    from fsspec import AbstractFileSystem
    n = int(sys.argv[3])

    class SyntheticS3(AbstractFileSystem):
        # what s3fs.find(detail=True) returns for n objects: one info dict each, built page by page
        protocol = "synth"
        def exists(self, path, **kw): return True
        def isfile(self, path): return False
        def find(self, path, maxdepth=None, withdirs=False, detail=False, **kw):
            out, stamp = {}, datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
            for i in range(n):
                key = f"{path}/{i % 997:03d}/img-{(i * 7919) % n:09d}.jpg"
                out[key] = {"Key": key, "LastModified": stamp, "ETag": '"%032x"' % i, "Size": 100000 + i % 5000,
                            "StorageClass": "STANDARD", "type": "file", "size": 100000 + i % 5000, "name": key}
            return out
    fsspec.register_implementation("synth", SyntheticS3)
    spec = importlib.util.spec_from_file_location("legacy_inputs", sys.argv[2])
    legacy = importlib.util.module_from_spec(spec)
    sys.modules["legacy_inputs"] = legacy
    spec.loader.exec_module(legacy)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = status_mb("VmRSS")
    t0 = time.perf_counter()
    plan = legacy.plan_inputs("synth://bucket/photos", shard_size=16384)
    seconds = time.perf_counter() - t0
    print(json.dumps({"seconds": seconds, "peak_mb": status_mb("VmHWM"), "base_mb": base,
                      "items": plan.num_files, "parts": len(plan.shards)}))
""")


def write_inventory(path: Path, n: int) -> None:
    """An S3 Inventory data file of n objects, keys shuffled (no order), written a million rows at a time."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    order = rng.permutation(n)
    schema = pa.schema([("bucket", pa.string()), ("key", pa.string()), ("size", pa.int64()),
                        ("last_modified_date", pa.string()), ("storage_class", pa.string())])
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, n, 1_000_000):
            ids = pa.array(order[start:start + 1_000_000])
            folder = pc.utf8_lpad(pc.cast(pc.divide(ids, 10_000), pa.string()), 5, "0")
            name = pc.utf8_lpad(pc.cast(ids, pa.string()), 10, "0")
            key = pc.binary_join_element_wise("corpus/", folder, "/img-", name, ".jpg", "")
            m = len(ids)
            writer.write_table(pa.table({
                "bucket": pa.array(["photos-bucket"] * m), "key": key,
                "size": pa.array(100_000 + (order[start:start + m] % 50_000), pa.int64()),
                "last_modified_date": pa.array(["2026-11-30T00:00:00.000Z"] * m),
                "storage_class": pa.array(["STANDARD"] * m)}, schema=schema))


def run(script: str, *args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", script, str(REPO), *args], capture_output=True, text=True, env=env,
                          timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def lookup(rows: int, folder: Path) -> dict:
    """Bytes read to find 3 keys in an archive of ``rows`` rows, against the archive's size."""
    import numpy as np
    import pyarrow as pa
    from fsspec.implementations.local import LocalFileSystem

    sys.path.insert(0, str(REPO))
    from pipeline.archive import INDEX_FILE, footer_metadata, parquet_bytes
    from pipeline.lookup import find
    from pipeline.parts import INDEX_SCHEMA
    from pipeline.schema import ARCHIVE_COLUMNS
    from pipeline.storage import Location

    rng = np.random.default_rng(1)
    out = Location.of(str(folder))
    index, total = [], 0
    per_part = 16_384
    for part, start in enumerate(range(0, rows, per_part)):
        n = min(per_part, rows - start)
        keys = [f"corpus/{i // 10_000:05d}/img-{i:010d}" for i in range(start, start + n)]
        records = [rng.bytes(1500) for _ in range(n)]
        columns = {c.name: pa.nulls(n, c.type) for c in ARCHIVE_COLUMNS}
        columns.update(key=pa.array(keys), source_uri=pa.array(["s3://x"] * n), status=pa.array(["ok"] * n),
                       bitstream=pa.array(records, pa.binary()), model_id=pa.array(["m"] * n),
                       model_fingerprint=pa.array(["f"] * n), format_version=pa.array([3] * n, pa.int32()),
                       read_s=pa.array([0.0] * n), decode_s=pa.array([0.0] * n), encode_s=pa.array([0.0] * n))
        table = pa.table(columns, schema=pa.schema([c.field() for c in ARCHIVE_COLUMNS]))
        data = parquet_bytes(table, ARCHIVE_COLUMNS, footer_metadata("bench", "bench", part, table))
        name = f"part-{part:05d}"
        out.write_bytes(out.path(f"{name}.parquet"), data)
        total += len(data)
        index.append({"part": name, "shard": part, "rows": n, "size": len(data), "first_key": keys[0],
                      "last_key": keys[-1], "sha256": ""})
    sink = pa.BufferOutputStream()
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(index, INDEX_SCHEMA), sink)
    out.write_bytes(out.path(INDEX_FILE), sink.getvalue().to_pybytes())

    counted = {"bytes": 0, "opens": set()}

    class Counting(LocalFileSystem):
        protocol = "counted"

        def _open(self, path, mode="rb", **kw):
            f = super()._open(path, mode, **kw)
            counted["opens"].add(os.path.basename(path))
            read = f.read

            def counting_read(*a):
                data = read(*a)
                counted["bytes"] += len(data)
                return data

            f.read = counting_read
            return f

    import fsspec

    fsspec.register_implementation("counted", Counting, clobber=True)
    wanted = [f"corpus/{i // 10_000:05d}/img-{i:010d}" for i in (17, rows // 2, rows - 1)]
    t0 = time.perf_counter()
    found = find(f"counted://{folder}", wanted, columns=["key", "record"])
    return {"rows": rows, "parts": len(index), "archive_bytes": total, "bytes_read": counted["bytes"],
            "files_opened": sorted(counted["opens"]), "found": found.num_rows, "seconds": time.perf_counter() - t0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs=2, default=[1_000_000, 10_000_000])
    parser.add_argument("--legacy", type=int, default=1_000_000, help="objects for today's planner (0: skip)")
    parser.add_argument("--lookup-rows", type=int, default=100_000, help="rows of the lookup archive (0: skip)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-plan-", dir="/tmp") as tmp:
        figures = {}
        for n in args.sizes:
            inventory = Path(tmp) / f"inventory-{n}.parquet"
            t0 = time.perf_counter()
            write_inventory(inventory, n)
            made = time.perf_counter() - t0
            figures[n] = run(MEASURE, str(inventory), f"{tmp}/plan-{n}/_plan")
            f = figures[n]
            print(f"new planner, {n:>11,} objects: peak RSS {f['peak_mb']:7.0f} MB "
                  f"({f['peak_mb'] - f['base_mb']:6.0f} MB above the {f['base_mb']:.0f} MB after imports), "
                  f"{f['seconds']:6.1f} s, {f['parts']:,} parts "
                  f"(inventory written in {made:.0f} s)", flush=True)
            inventory.unlink()
        small, large = args.sizes
        slope = (figures[large]["peak_mb"] - figures[small]["peak_mb"]) / ((large - small) / 1e6)
        seconds_slope = (figures[large]["seconds"] - figures[small]["seconds"]) / ((large - small) / 1e6)
        print(f"slope: {slope:+.1f} MB of peak driver RSS and {seconds_slope:.1f} s per million objects "
              f"(targets: <= 50 MB/M; at 10 M <= 1,536 MB peak and <= 180 s)")
        if args.legacy:
            old = Path(tmp) / "legacy_inputs.py"
            old.write_text(subprocess.run(["git", "show", f"{LEGACY_COMMIT}:pipeline/inputs.py"], cwd=REPO,
                                          capture_output=True, text=True, check=True).stdout)
            f = run(LEGACY, str(old), str(args.legacy))
            print(f"today's planner, {args.legacy:>7,} objects: peak RSS {f['peak_mb']:7.0f} MB "
                  f"({f['peak_mb'] - f['base_mb']:6.0f} MB above imports, "
                  f"{(f['peak_mb'] - f['base_mb']) / (args.legacy / 1e6):.0f} MB per million), {f['seconds']:6.1f} s",
                  flush=True)
        if args.lookup_rows:
            f = lookup(args.lookup_rows, Path(tmp) / "archive")
            print(f"lookup: 3 keys of {f['rows']:,} rows in {f['parts']} parts: read {f['bytes_read']:,} bytes of "
                  f"{f['archive_bytes']:,} ({100 * f['bytes_read'] / f['archive_bytes']:.2f} %), files opened "
                  f"{f['files_opened']}, {f['found']} rows found in {f['seconds']:.2f} s")


if __name__ == "__main__":
    main()
