"""Pipeline efficiency: the Ray Data jobs against a plain in-process loop, same images, same preset.

    .venv/bin/python bench/bench_pipeline.py [--images 96] [--size 512] [--model tiny] [--actors 1] [--threads 1]
                                             [--no-side-information] [--encode-only] [--codec-service]

Prints, side by side from one run: images/s of ``encode-job`` vs a loop (read file -> load_image
-> compress -> one Parquet file), their ratio (pipeline efficiency), and the same for
``decode-job`` vs a loop (read archive -> decompress -> PNG file). By default both arms run the
codec the same way, one process with one torch thread (the job: one actor; its reading and
writing tasks run beside it), so the ratio is the pipeline's own efficiency. ``--actors N``
shows the job scaling out; ``--threads`` sets torch threads in the loop and in each actor (on a
shared, busy machine multi-threaded torch loses most of its speed, see pipeline/config.py). The
job's time counts everything from the call to the summary (listing, actor start-up, model load
in the actor, writing); the loop's counts its model load too. Starting Ray itself (once per
command, reusable with --address) is printed separately, and each job's time is split into its
phases: before the dataset starts (plan, model store, checks), start-up to the first part written
(Ray Data operators, worker and actor start, imports, model load, the first part's images),
streaming, and the end (stats, index).

``--codec-service`` runs the job arms on a warm codec service (``pipeline.codec_service``, one
server) started before them, as a long-running cluster keeps one for its scheduled jobs; its start
(imports, model load) is printed separately, once per cluster as Ray's own start is. It then also
times a whole ``sprdiff encode-job`` command on the same cluster (a new process and Ray driver).

glibc's malloc thresholds are raised for both arms (see RAY_NOTES): the script re-executes
itself with them set if they are missing.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "268435456", "MALLOC_ARENA_MAX": "1"}
if any(os.environ.get(k) != v for k, v in MALLOC_ENV.items()):
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC_ENV})

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from PIL import Image  # noqa: E402


def make_images(folder: Path, count: int, size: int) -> list[Path]:
    """``count`` different size x size photos (skimage.data, resized, flipped and shifted) as PNG files."""
    from skimage import data

    sources = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket(), data.immunohistochemistry()]
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        src = Image.fromarray(sources[i % len(sources)])
        scale = size * (1.0 + 0.1 * (i // len(sources) % 4)) / min(src.size)
        big = np.asarray(src.resize((round(src.size[0] * scale) + 1, round(src.size[1] * scale) + 1)))
        dy, dx = (i * 7) % (big.shape[0] - size + 1), (i * 13) % (big.shape[1] - size + 1)
        crop = big[dy:dy + size, dx:dx + size]
        crop = crop[:, ::-1] if (i // 2) % 2 else crop
        path = folder / f"img-{i:04d}.png"
        Image.fromarray(np.ascontiguousarray(crop)).save(path)
        paths.append(path)
    return paths


def loop_encode(paths: list[Path], model_name: str, out: Path, side: bool) -> tuple[float, float]:
    """The plain loop; returns (wall seconds, mean seconds in compress per image)."""
    from sprdiff import SPRDiff, load_image

    t0 = time.perf_counter()
    model = SPRDiff.from_pretrained(model_name)
    keys, records, codec = [], [], 0.0
    for path in paths:
        pixels = load_image(path.read_bytes())
        c0 = time.perf_counter()
        [record] = model.compress([pixels], colour_correction=side)
        codec += time.perf_counter() - c0
        keys.append(path.stem)
        records.append(record)
    pq.write_table(pa.table({"key": keys, "record": records}), out)
    return time.perf_counter() - t0, codec / len(paths)


def loop_decode(archive: Path, model_name: str, out: Path) -> tuple[float, float, int]:
    from sprdiff import SPRDiff
    from sprdiff.images import encode_png

    t0 = time.perf_counter()
    model = SPRDiff.from_pretrained(model_name)
    table = pq.read_table(archive, columns=["key", "record"])
    out.mkdir(parents=True, exist_ok=True)
    codec, n = 0.0, 0
    for key, record in zip(table.column("key").to_pylist(), table.column("record").to_pylist()):
        if record is None:
            continue
        c0 = time.perf_counter()
        [pixels] = model.decompress([record], batch_size=1)
        codec += time.perf_counter() - c0
        (out / f"{key}.png").write_bytes(encode_png(pixels))
        n += 1
    return time.perf_counter() - t0, codec / max(1, n), n


def time_command(work: Path, args: argparse.Namespace, address: str, side: bool) -> tuple[float, float]:
    """Wall seconds of ``sprdiff encode-job`` on the bench's cluster and codec service, as a scheduled
    job runs it (the archive must hold the same records as the in-process job's). The command names
    the model saved to a directory, as users name theirs: a preset built in code would cost its
    driver the model stack's imports (about 7 s here) to fingerprint it. Returns the wall seconds and
    the command's own mean codec seconds per image."""
    from sprdiff import SPRDiff

    saved = work / "saved-model"
    SPRDiff.from_pretrained(args.model).save_pretrained(str(saved))  # same weights, same fingerprint
    command = [sys.executable, "-m", "jobs.cli", "encode-job", "--input", str(work / "photos"),
               "--output", str(work / "archive-command"), "--model", str(saved), "--rows-per-part",
               str(args.shard_size), "--address", address, "--codec-service", "bench"]
    t0 = time.perf_counter()
    subprocess.run([*command, *([] if side else ["--no-colour-correction"])], check=True, capture_output=True,
                   cwd=Path(__file__).resolve().parents[1])
    seconds = time.perf_counter() - t0
    records = [pq.read_table(work / name, columns=["key", "record"]).sort_by("key").column("record")
               for name in ("archive", "archive-command")]
    assert records[0].equals(records[1]), "the command's bitstreams differ from the in-process job's"
    return seconds, float(np.mean(pq.read_table(work / "archive-command", columns=["encode_s"]).column("encode_s")))


def marked(stream, marks: dict, start: float):
    """``stream`` noting, in seconds since ``start``, when it was first called, its first summary and its last."""
    def run(*args, **kwargs):
        marks.setdefault("submit", time.perf_counter() - start)
        for summary in stream(*args, **kwargs):
            marks.setdefault("first", time.perf_counter() - start)
            marks["last"] = time.perf_counter() - start
            yield summary
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--size", type=int, default=512, help="square image side in pixels (default: 512)")
    parser.add_argument("--actors", type=int, default=1, help="codec actors of the job (default: 1)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the loop and of each actor")
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--shard-size", type=int, default=8, help="rows per archive part (default: 8)")
    parser.add_argument("--work-dir", default=None, help="default: a temporary directory")
    parser.add_argument("--no-side-information", action="store_true", help="encode without colour map and offset grid")
    parser.add_argument("--encode-only", action="store_true", help="skip the decode arms")
    parser.add_argument("--codec-service", action="store_true",
                        help="run the job arms on a warm codec service started before them")
    args = parser.parse_args()

    import ray
    import torch

    from pipeline import codec_service, ray_runner
    from pipeline.config import ComputeConfig, DecodeJobConfig, EncodeJobConfig
    from pipeline.decode_job import run_decode_job
    from pipeline.encode_job import run_encode_job

    cores = os.cpu_count() or 1
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench-pipeline-"))
    paths = make_images(work / "photos", args.images, args.size)
    torch.set_num_threads(args.threads)
    compute = ComputeConfig(actors=args.actors, cpus_per_actor=args.threads)
    print(f"{args.images} images of {args.size}x{args.size}, model {args.model}, {cores} cores; loop: one process, "
          f"torch {torch.get_num_threads()} threads; job: {compute.actors} actors x {compute.actor_threads} torch "
          f"threads, shards of {args.shard_size}; load average before: {os.getloadavg()[0]:.1f}")

    side = not args.no_side_information
    loop_enc_s, enc_codec = loop_encode(paths, args.model, work / "loop-archive.parquet", side)
    enc_marks, dec_marks = {}, {}
    t0 = time.perf_counter()
    with ray_runner.ray_session(num_cpus=ray_runner.embedded_cpus(compute)):
        ray_start = time.perf_counter() - t0
        if args.codec_service:
            t0 = time.perf_counter()
            codec_service.start_service("bench", args.model, args.actors, compute, env=ray_runner.MALLOC_ENV)
            service_start = time.perf_counter() - t0
            compute = ComputeConfig(service="bench")
        t0 = time.perf_counter()
        enc = run_encode_job(EncodeJobConfig(input=str(work / "photos"), output=str(work / "archive"),
                                             model=args.model, rows_per_part=args.shard_size, compute=compute,
                                             colour_correction=side),
                             marked(ray_runner.stream_encode, enc_marks, t0), log=lambda _: None)
        job_enc_s = time.perf_counter() - t0
        if args.codec_service:
            command_s, command_codec = time_command(work, args, ray.get_runtime_context().gcs_address, side)
        if not args.encode_only:
            loop_dec_s, dec_codec, n_dec = loop_decode(work / "archive", args.model, work / "loop-decoded")
            t0 = time.perf_counter()
            dec = run_decode_job(DecodeJobConfig(input=str(work / "archive"), output=str(work / "decoded"),
                                                 compute=compute), marked(ray_runner.stream_decode, dec_marks, t0),
                                 log=lambda _: None)
            job_dec_s = time.perf_counter() - t0
            assert dec["counts"] == {"ok": args.images} and n_dec == args.images
    assert enc["counts"] == {"ok": args.images}
    loop_records = pq.read_table(work / "loop-archive.parquet").column("record").to_pylist()
    job_records = pq.read_table(work / "archive", columns=["record"]).column("record").to_pylist()
    assert loop_records == job_records, "the job's bitstreams differ from the loop's"

    n = args.images
    job_enc_codec = float(np.mean(pq.read_table(work / "archive", columns=["encode_s"]).column("encode_s")))
    arms = [("encode", enc_codec, job_enc_codec, loop_enc_s, job_enc_s, enc_marks)]
    if not args.encode_only:
        job_dec_codec = float(np.mean(pq.read_table(work / "decoded" / "_manifest").column("decode_s")))
        arms.append(("decode", dec_codec, job_dec_codec, loop_dec_s, job_dec_s, dec_marks))
    print(f"ray start (once per command; not in the job times): {ray_start:.1f} s")
    if args.codec_service:
        print(f"codec service start, {args.actors} server(s) (once per cluster; not in the job times): "
              f"{service_start:.1f} s")
    print("codec s/img: mean seconds per image inside compress/decompress (loop process | job actor)")
    print(f"{'':8}{'codec s/img':>14}{'loop s':>9}{'loop img/s':>11}{'job s':>9}{'job img/s':>10}{'ratio':>7}")
    for name, codec, job_codec, loop_s, job_s, _ in arms:
        print(f"{name:8}{codec:7.3f}|{job_codec:6.3f}{loop_s:9.1f}{n / loop_s:11.2f}{job_s:9.1f}{n / job_s:10.2f}"
              f"{loop_s / job_s:7.2f}")
    for name, _, job_codec, _, job_s, _ in arms:
        if args.actors > 1:
            break  # actors share the cores: per-image times overlap, no simple fixed-cost estimate
        fixed = job_s - n * job_codec / args.actors
        print(f"{name}-job: {fixed:.1f} s not spent in the codec (actor start-up: imports and model load, "
              f"first and last shard); at this fixed cost the ratio reaches 0.90 from about "
              f"{9 * fixed / job_codec * args.actors:.0f} images")
    print("job phases, s: before the dataset | start-up to the first part | streaming | end")
    for name, _, _, _, job_s, marks in arms:
        print(f"{name}-job: {marks['submit']:.1f} | {marks['first'] - marks['submit']:.1f} | "
              f"{marks['last'] - marks['first']:.1f} | {job_s - marks['last']:.1f}")
    if args.codec_service:
        print(f"a whole `sprdiff encode-job` command on the warm cluster (new process, imports, Ray driver, job; "
              f"--model the same weights saved to a directory): "
              f"{command_s:.1f} s wall, {command_s - n * command_codec / args.actors:.1f} s not spent in the codec "
              f"({command_codec:.3f} s/img in the codec)")
    print(f"work dir: {work}; load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
