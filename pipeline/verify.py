"""``sprdiff verify``: scrub an archive end to end and name exactly what is damaged.

Checks, in the order they run:

* the archive: ``_job.json`` (its ``job_id``), the plan (``_plan/``, when there is one) or else the
  part count ``_job.json`` names, the part sidecars (``_parts/<part>.json``) and ``_stats.json``;
* every part: present (none missing, none extra); its bytes against the SHA-256 and size in its
  sidecar, so a flipped byte anywhere in the file is caught; its footer readable and from this
  job; its row count and key range against the footer, the sidecar and the plan;
* every record: the header parses, the keyed CRC holds with the fingerprint of its row, its
  length, image size and rate id agree with its row; keys unique across the archive;
* every model fingerprint: stored weights exist (``sprdiff.model_store``) and their files hash to it;
* a sample of records (``--decode-sample N``; every record with ``--full``) decodes to an image of
  the size its row says.

Memory is bounded by one row group of one part plus the sample: parts are streamed, record by
record, and duplicate keys across parts are looked for only between parts whose key ranges overlap.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.archive import JOB_FILE, PARTS_DIR, STATS_FILE
from pipeline.decode_stages import FALLBACK_PLACES
from pipeline.inputs.plan import PLAN_DIR, StoredPlan, part_name
from pipeline.schema import RECORD_COLUMN, archive_version, as_current, stored_name
from pipeline.storage import Location, redact_uri
from sprdiff import bitstream
from sprdiff.errors import BitstreamError, SPRDiffError
from sprdiff.model_store import (
    ARCHIVE_STORE,
    ModelCache,
    ModelNotFoundError,
    directory_fingerprint,
    locate_model,
    place_in,
)

PART_GLOB = "part-*.parquet"
ROWS_PER_READ = 1024  # rows in memory at once while streaming a part
_HASH_CHUNK = 8 << 20
DAMAGE, NOTE = "damage", "note"


@dataclass(frozen=True)
class Finding:
    severity: str  # "damage": the archive lost or changed something; "note": what could not be checked, and why
    check: str
    message: str
    part: str | None = None
    key: str | None = None


@dataclass
class VerifyReport:
    archive: str
    findings: list[Finding] = field(default_factory=list)
    parts: int = 0
    rows: int = 0
    records: int = 0
    decoded: int = 0
    fingerprints: int = 0

    @property
    def damaged(self) -> bool:
        return any(f.severity == DAMAGE for f in self.findings)

    def add(self, severity: str, check: str, message: str, part: str | None = None, key: str | None = None) -> None:
        self.findings.append(Finding(severity, check, message, part, key))


@dataclass
class _PartFacts:
    """What streaming one part found (kept per part: a few numbers and the key range)."""

    rows: int = 0
    counts: Counter = field(default_factory=Counter)
    record_bytes: int = 0
    first_key: str | None = None
    last_key: str | None = None
    fingerprints: dict[str, str] = field(default_factory=dict)  # fingerprint -> first key written by it


# ---- the archive's own description of itself

def _read_json(location: Location, relative: str) -> dict | None:
    path = location.path(relative)
    if not location.exists(path):
        return None
    return json.loads(location.read_bytes(path))


def _read_sidecars(location: Location) -> dict[str, dict]:
    found = location.fs.glob(location.path(PARTS_DIR, "*.json"))
    return {p.rsplit("/", 1)[-1].removesuffix(".json"): json.loads(location.read_bytes(p)) for p in sorted(found)}


def _read_plan(location: Location, report: VerifyReport) -> dict[str, dict] | None:
    """Expected rows (and, for image inputs, key range) per part from the stored plan (``_plan/``,
    ``pipeline.inputs.plan``), or None without one. One small entry per part, read in batches."""
    plan = StoredPlan.open(Location(location.fs, location.path(PLAN_DIR)))
    if plan is None:
        return None
    expected: dict[str, dict] = {}
    for shard in plan.shards():
        entry: dict = {}
        if shard.expected_rows >= 0:  # -1: tar shards, whose rows are known only once read
            entry["rows"] = shard.expected_rows
        if plan.kind == "images" and shard.expected_rows > 0:  # one row per item: the items' keys are the rows'
            entry |= {"first_key": shard.first_key, "last_key": shard.last_key}
        expected[shard.name] = entry
    return expected


# ---- per part

FOOTER_PLACE_KEYS = ("sprdiff.model_store", "sprdiff.model_source")


def _footer_places(location: Location, path: str) -> tuple[dict[str, str], int] | None:
    """A part's model places (footer keys) and archive layout, or None if its footer cannot be read
    (the part check reports why). Only these few keys are kept: one small dict per part."""
    try:
        with location.fs.open(path, "rb") as f:
            kv = pq.ParquetFile(f).schema_arrow.metadata or {}
    except Exception:  # noqa: BLE001 - reported by _stream_part
        return None
    return {k: kv[k.encode()].decode() for k in FOOTER_PLACE_KEYS if k.encode() in kv}, archive_version(kv)


def _sha256(location: Location, path: str) -> tuple[str, int]:
    h, size = hashlib.sha256(), 0
    with location.fs.open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def _check_record(report: VerifyReport, part: str, row: dict) -> bool:
    """Check one row's record; False (with a finding) if it is damaged, or has none."""
    key, record = row["key"], row[RECORD_COLUMN]
    if record is None:
        if row["status"] == "ok":
            report.add(DAMAGE, "record", "an ok row without a record", part, key)
        return False
    report.records += 1
    try:
        header, _ = bitstream.read_header(record)
        fingerprint = bytes.fromhex(row["model_fingerprint"] or "")
        # The CRC covers every byte and is keyed by the full fingerprint: a flipped bit anywhere fails here.
        bitstream.unpack(record, fingerprint, num_strings=len(header.string_lengths))
    except ValueError:
        report.add(DAMAGE, "record", f"model_fingerprint {row['model_fingerprint']!r} is not a SHA-256", part, key)
        return False
    except BitstreamError as e:
        report.add(DAMAGE, "record", f"{e.status}: {e}", part, key)
        return False
    problems = []
    if row.get("num_bytes") is not None and row["num_bytes"] != len(record):
        problems.append(f"num_bytes says {row['num_bytes']}, the record has {len(record)}")
    if (row.get("width"), row.get("height")) != (header.width, header.height):
        problems.append(f"the row says {row.get('width')}x{row.get('height')}, the record's header "
                        f"{header.width}x{header.height}")
    if row.get("rate_id") is not None and row["rate_id"] != header.rate_id:  # null: a part of layout 2 or older
        problems.append(f"the row says rate {row['rate_id']}, the record's header rate {header.rate_id}")
    for problem in problems:
        report.add(DAMAGE, "record", problem, part, key)
    return not problems


def _stream_part(location: Location, path: str, part: str, report: VerifyReport,
                 on_record: Callable[[str, dict], None]) -> tuple[_PartFacts, dict[str, str]] | None:
    """Check one part's footer and every row; None (with a finding) if its footer cannot be read."""
    facts = _PartFacts()
    try:
        with location.fs.open(path, "rb") as f:
            parquet = pq.ParquetFile(f)
            kv = {k.decode(): v.decode() for k, v in (parquet.schema_arrow.metadata or {}).items()}
            file_names = parquet.schema_arrow.names
            wanted = ["key", "status", RECORD_COLUMN, "model_fingerprint", "width", "height", "num_bytes", "rate_id"]
            columns = [stored_name(c, file_names) for c in wanted if stored_name(c, file_names) in file_names]
            footer_rows = parquet.metadata.num_rows
            seen: set[str] = set()
            try:
                for batch in parquet.iter_batches(batch_size=ROWS_PER_READ, columns=columns):
                    for row in as_current(pa.Table.from_batches([batch])).to_pylist():
                        _account(facts, row, seen, report, part)
                        if _check_record(report, part, row):
                            on_record(part, row)
            except Exception as e:  # noqa: BLE001 - any decoding failure of the data pages is damage
                report.add(DAMAGE, "data", f"the part's data cannot be read after {facts.rows} rows: "
                                           f"{type(e).__name__}: {e}", part, facts.last_key)
    except Exception as e:  # noqa: BLE001 - a footer that does not parse, whatever pyarrow raises
        report.add(DAMAGE, "footer", f"the footer cannot be read (truncated or overwritten?): {type(e).__name__}: {e}",
                   part)
        return None
    if facts.rows != footer_rows:
        return facts, kv  # already reported as unreadable data
    if kv.get("sprdiff.rows") and int(kv["sprdiff.rows"]) != footer_rows:
        report.add(DAMAGE, "rows", f"the footer's sprdiff.rows says {kv['sprdiff.rows']}, it holds {footer_rows}",
                   part)
    return facts, kv


def _account(facts: _PartFacts, row: dict, seen: set[str], report: VerifyReport, part: str) -> None:
    key = row["key"]
    facts.rows += 1
    if key in seen:
        report.add(DAMAGE, "keys", "this key appears twice in the part", part, key)
    seen.add(key)
    facts.first_key = key if facts.first_key is None else min(facts.first_key, key)
    facts.last_key = key if facts.last_key is None else max(facts.last_key, key)
    facts.counts[row["status"]] += 1
    if row["status"] == "ok":
        facts.record_bytes += row.get("num_bytes") or 0
        facts.fingerprints.setdefault(row["model_fingerprint"], key)


def _compare(report: VerifyReport, part: str, source: str, expected: dict, facts: _PartFacts) -> None:
    """The part's rows, key range (and, against a sidecar, counts and record bytes) as ``source`` says."""
    found = {"rows": facts.rows, "first_key": facts.first_key, "last_key": facts.last_key}
    if source == "sidecar":
        found |= {"counts": dict(facts.counts), "record_bytes": facts.record_bytes,
                  "fingerprints": sorted(facts.fingerprints)}
    for name, value in found.items():
        if name in expected and expected[name] != value:
            report.add(DAMAGE, source, f"{name}: the {source} says {expected[name]!r}, the part holds {value!r}", part)


# ---- the whole archive

def _model_places(location: Location, job: dict | None, footers: list[dict[str, str]], layout: int,
                  extra: tuple[str, ...]) -> list[str]:
    """Where stored weights may be. Layout 1 stored none: its footers' model source and the shipped
    model are all there is; from layout 2 on only stores count."""
    root = location.uri()
    places = [*extra, place_in(root, ARCHIVE_STORE)]
    if job and job.get("model_store"):
        places.append(place_in(root, job["model_store"]))
    places += [place_in(root, kv["sprdiff.model_store"]) for kv in footers if kv.get("sprdiff.model_store")]
    if layout < 2:
        places += [kv["sprdiff.model_source"] for kv in footers if kv.get("sprdiff.model_source")]
        places += list(FALLBACK_PLACES)
    return list(dict.fromkeys(places))


def _check_weights(report: VerifyReport, fingerprint: str, where: tuple[str, str], places: list[str]) -> None:
    part, key = where
    try:
        located = locate_model(fingerprint, places)
    except ModelNotFoundError as e:
        report.add(DAMAGE, "weights", str(e), part, key)
        return
    from sprdiff import storage

    local = storage.local_path(located.source)
    if local is None and storage.is_remote_uri(located.source):
        local = storage.fetch(located.source)
    if local is not None and (local / "config.json").is_file():
        found = directory_fingerprint(local)
        if found != fingerprint:
            report.add(DAMAGE, "weights", f"{redact_uri(located.source)} holds fingerprint {found}, not {fingerprint}: "
                                          f"the stored weights were changed", part, key)


def _expected_parts(location: Location, job: dict | None, plan: dict | None, sidecars: dict,
                    listed: dict[str, str], report: VerifyReport) -> None:
    """Report parts missing from the archive, and parts in it that this job did not write."""
    if plan is not None:
        expected, basis = set(plan), "the plan"
    elif job is not None and isinstance(count := job.get("parts", job.get("shards")), int):  # layout 1: "shards"
        expected, basis = {part_name(i) for i in range(count)}, f"{JOB_FILE} ({count} parts)"
        report.add(NOTE, "plan", f"no {PLAN_DIR}/: parts checked against {basis}, the sidecars and {STATS_FILE} only")
    else:
        expected, basis = set(sidecars) | set(listed), "the sidecars"
        report.add(NOTE, "plan", f"no {PLAN_DIR}/ and no part count: parts checked against the sidecars and "
                                 f"{STATS_FILE} only")
    for name in sorted(expected - set(listed)):
        known = (plan or {}).get(name) or sidecars.get(name) or {}
        held = f" (it held keys {known['first_key']!r} .. {known['last_key']!r})" if known.get("first_key") else ""
        report.add(DAMAGE, "part", f"missing: {basis} has this part, the archive does not{held}", name)
    for name in sorted(set(listed) - expected):
        report.add(DAMAGE, "part", f"not in {basis}: a part this job did not write", name)


def _check_digest(location: Location, path: str, name: str, sidecar: dict | None, job_id: str | None,
                  report: VerifyReport) -> None:
    if sidecar is None:
        report.add(NOTE, "digest", f"no {PARTS_DIR}/{name}.json: the part's bytes were not checked against a "
                                   f"digest (layout-1 archives have none)", name)
        return
    if job_id and sidecar.get("job_id") != job_id:
        report.add(DAMAGE, "job", f"the sidecar is from job {sidecar.get('job_id')}, this archive is job {job_id}",
                   name)
    digest, size = _sha256(location, path)
    if size != sidecar.get("size"):
        report.add(DAMAGE, "digest", f"the file has {size} bytes, the sidecar says {sidecar.get('size')} "
                                     f"(truncated or rewritten)", name)
    elif digest != sidecar.get("sha256"):
        report.add(DAMAGE, "digest", f"SHA-256 {digest[:16]}... is not the sidecar's "
                                     f"{str(sidecar.get('sha256'))[:16]}...: bytes changed since the commit", name)


def _check_footer(kv: dict[str, str], facts: _PartFacts, name: str, job_id: str | None,
                  report: VerifyReport) -> None:
    if job_id and kv.get("sprdiff.job_id") != job_id:
        report.add(DAMAGE, "job", f"the footer is from job {kv.get('sprdiff.job_id')}, this archive is job "
                                  f"{job_id}: a part from another job", name)
    footer_range = (kv.get("sprdiff.first_key"), kv.get("sprdiff.last_key"))
    if footer_range[0] and footer_range != (facts.first_key, facts.last_key):
        report.add(DAMAGE, "footer", f"the footer's key range {footer_range[0]!r} .. {footer_range[1]!r} is not "
                                     f"the rows' {facts.first_key!r} .. {facts.last_key!r}", name)


class _Decoder:
    """Decodes records with the weights their fingerprints name: a reservoir sample, or every one."""

    def __init__(self, places: list[str], report: VerifyReport, *, sample: int, full: bool, device: str, seed: int):
        self.cache = ModelCache(places, device=device)
        self.report, self.size, self.full = report, sample, full
        self.sample: list[tuple[str, dict]] = []
        self.seen = 0
        self.rng = random.Random(seed)

    def offer(self, part: str, row: dict) -> None:
        if row[RECORD_COLUMN] is None or row["status"] != "ok":
            return
        if self.full:
            self.decode(part, row)
        elif self.size > 0:
            self.seen += 1  # reservoir sampling: every record equally likely, memory bounded by the sample
            if len(self.sample) < self.size:
                self.sample.append((part, row))
            elif (j := self.rng.randrange(self.seen)) < self.size:
                self.sample[j] = (part, row)

    def finish(self) -> None:
        for part, row in self.sample:
            self.decode(part, row)

    def decode(self, part: str, row: dict) -> None:
        try:
            model = self.cache.get(row["model_fingerprint"])
        except (ModelNotFoundError, ValueError):
            return  # reported once per fingerprint by the weights check
        try:
            [pixels] = model.decompress([row[RECORD_COLUMN]])
        except SPRDiffError as e:
            self.report.add(DAMAGE, "decode", f"{e.status}: {e}", part, row["key"])
            return
        self.report.decoded += 1
        if pixels.shape[:2] != (row["height"], row["width"]):
            self.report.add(DAMAGE, "decode", f"decodes to {pixels.shape[1]}x{pixels.shape[0]}, the row says "
                                              f"{row['width']}x{row['height']}", part, row["key"])


def verify_archive(uri: str, *, decode_sample: int = 0, full: bool = False, model_stores: tuple[str, ...] = (),
                   device: str = "cpu", seed: int = 0, log: Callable[[str], None] = lambda _: None) -> VerifyReport:
    """Check the archive at ``uri`` (local path or any fsspec URI); see the module docstring."""
    location = Location.of(uri)
    report = VerifyReport(redact_uri(location.uri()))
    if not location.exists(location.root):
        report.add(DAMAGE, "archive", f"nothing at {report.archive}")
        return report
    job = _read_json(location, JOB_FILE)
    job_id = (job or {}).get("job_id")
    if job is None:
        report.add(NOTE, "job", f"no {JOB_FILE}: parts cannot be told from another job's")
    elif job_id is None:
        report.add(NOTE, "job", f"{JOB_FILE} has no job_id (archive layout {job.get('archive_version', 1)}): parts "
                                f"cannot be told from another job's")
    plan = _read_plan(location, report)
    sidecars = _read_sidecars(location)
    listed = {p.rsplit("/", 1)[-1].removesuffix(".parquet"): p for p in location.fs.glob(location.path(PART_GLOB))}
    _expected_parts(location, job, plan, sidecars, listed, report)

    read = [r for r in (_footer_places(location, listed[name]) for name in sorted(listed)) if r is not None]
    footers = list({tuple(sorted(kv.items())): kv for kv, _ in read}.values())  # distinct: usually one
    layout = max([int((job or {}).get("archive_version", 1)), *(version for _, version in read)])
    places = _model_places(location, job, footers, layout, model_stores)
    decoder = _Decoder(places, report, sample=decode_sample, full=full, device=device, seed=seed)
    ranges: list[tuple[str, str, str]] = []
    first_use: dict[str, tuple[str, str]] = {}
    totals: Counter = Counter()
    for name in sorted(listed):
        log(f"verify: {name}")
        report.parts += 1
        _check_digest(location, listed[name], name, sidecars.get(name), job_id, report)
        streamed = _stream_part(location, listed[name], name, report, decoder.offer)
        if streamed is None:
            continue
        facts, kv = streamed
        _check_footer(kv, facts, name, job_id, report)
        for source, expected in (("sidecar", sidecars.get(name)), ("plan", (plan or {}).get(name))):
            if expected is not None:
                _compare(report, name, source, expected, facts)
        report.rows += facts.rows
        totals.update(facts.counts)
        if facts.first_key is not None:
            ranges.append((facts.first_key, facts.last_key, name))
        for fingerprint, key in facts.fingerprints.items():
            first_use.setdefault(fingerprint, (name, key))

    _check_duplicates_across_parts(location, listed, ranges, report)
    _check_stats(location, report, totals)
    report.fingerprints = len(first_use)
    for fingerprint, where in sorted(first_use.items()):
        _check_weights(report, fingerprint, where, places)
    decoder.finish()
    return report


def _check_stats(location: Location, report: VerifyReport, totals: Counter) -> None:
    stats = _read_json(location, STATS_FILE)
    if stats is None or (stats.get("rows"), stats.get("counts")) == (report.rows, dict(totals)):
        return
    said = f"{STATS_FILE} says {stats.get('rows')} rows {stats.get('counts')}"
    if any(f.check in ("part", "footer", "data") for f in report.findings):
        report.add(NOTE, "stats", f"{said}; the readable parts hold {report.rows} (see the damaged parts)")
    else:
        report.add(DAMAGE, "stats", f"{said}, the parts hold {report.rows} {dict(totals)}")


def _check_duplicates_across_parts(location: Location, listed: dict[str, str], ranges: list[tuple[str, str, str]],
                                   report: VerifyReport) -> None:
    """Keys in two parts: only parts whose key ranges overlap can share one, so only those are compared."""
    ranges.sort()
    for i, (_, last, name) in enumerate(ranges):
        for first_other, _, other in ranges[i + 1:]:
            if first_other > last:
                break
            shared = _keys(location, listed[name]) & _keys(location, listed[other])
            for key in sorted(shared)[:10]:
                report.add(DAMAGE, "keys", f"this key is also in {other}", name, key)


def _keys(location: Location, path: str) -> set[str]:
    with location.fs.open(path, "rb") as f:
        return set(pq.read_table(f, columns=["key"]).column("key").to_pylist())


# ---- the table of findings

def format_report(report: VerifyReport) -> str:
    verdict = "DAMAGED" if report.damaged else "OK"
    head = (f"verify {report.archive}: {verdict}: {report.parts} parts, {report.rows} rows, {report.records} records "
            f"checked, {report.fingerprints} model(s), {report.decoded} decoded")
    if not report.findings:
        return head
    rows = [("severity", "part", "key", "check", "finding")]
    rows += [(f.severity, f.part or "-", f.key or "-", f.check, f.message) for f in report.findings]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [head, ""]
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4])
    return "\n".join(lines)


def iter_findings(report: VerifyReport, severity: str | None = None) -> Iterator[Finding]:
    return (f for f in report.findings if severity is None or f.severity == severity)
