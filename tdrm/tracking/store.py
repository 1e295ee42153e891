"""Reading Sacred runs back, from a FileStorage directory or from MongoDB, as one record shape.

A record (the JSON schema of `tdrm runs list --format json`, `RECORD_KEYS`):
    id          run id in its store (str)            source      "file" or "mongo"
    stage       data, teacher, traces, distill, ...  status      COMPLETED, FAILED, INTERRUPTED,
    start, stop ISO times (stop None while running)              RUNNING, DIED (running, heartbeat stale), ...
    duration_s  stop (or last heartbeat) - start      host        hostname
    git_commit  the commit the stage ran at           dvc_exp     DVC experiment name (None outside `dvc exp run`)
    dvc_baseline  the experiment's baseline commit    run_uid     one id shared by all observers of a run
    params      the run's config, flattened ("teacher.lr": 0.001)
    metrics     final values: the last point of every logged series and the numeric scalars of the
                stage's result, flattened ("test.exact_accuracy": 0.858)

`sync_to_mongo` copies FileStorage runs into MongoDB in Sacred's MongoObserver layout (runs and
metrics collections), skipping runs already there (matched by run_uid), so it can run again.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from .base import mask_url, scrub

RECORD_KEYS = ("id", "source", "stage", "status", "start", "stop", "duration_s", "host", "git_commit",
               "dvc_exp", "dvc_baseline", "run_uid", "params", "metrics")
STALE = timedelta(minutes=10)  # a RUNNING run whose heartbeat is older than this has died


class RunNotFound(KeyError):
    def __str__(self):
        return self.args[0]


@dataclass
class Run:
    """Everything about one run: the record plus the raw pieces."""

    record: dict
    config: dict
    info: dict
    result: object
    series: dict[str, tuple[list, list]] = field(default_factory=dict)  # name -> (steps, values)
    raw: dict = field(default_factory=dict)  # run.json / the Mongo document
    captured_out: str = ""


def flatten(d, prefix: str = "") -> dict:
    """Nested dicts -> {"a.b": value}; lists and scalars are values."""
    out = {}
    if isinstance(d, dict):
        for k, v in d.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            if isinstance(v, dict):
                out.update(flatten(v, key))
            else:
                out[key] = v
    elif prefix:
        out[prefix] = d
    return out


def final_metrics(result, series: dict) -> dict:
    """The last value of every series, then the numeric scalars of the result (flattened)."""
    out = {name: vals[-1] for name, (_, vals) in series.items() if vals}
    for k, v in flatten(result if isinstance(result, dict) else {"result": result}).items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out.setdefault(k, v)
    return out


def _time(t) -> datetime | None:
    if t is None or isinstance(t, datetime):
        return t
    return datetime.fromisoformat(str(t))


def _iso(t) -> str | None:
    t = _time(t)
    return t.isoformat(timespec="seconds") if t else None


def _status(raw: dict, now: datetime | None) -> str:
    status = raw.get("status", "UNKNOWN")
    beat = _time(raw.get("heartbeat"))
    if status == "RUNNING" and beat is not None and (now or datetime.now(timezone.utc).replace(tzinfo=None)) - beat > STALE:
        return "DIED"
    return status


def _uid(raw: dict, info: dict) -> str:
    """The run's own uid, or for runs recorded before it existed: experiment, start time, host."""
    if info.get("run_uid"):
        return str(info["run_uid"])
    host = (raw.get("host") or {}).get("hostname", "?")
    return f"{(raw.get('experiment') or {}).get('name', '?')}|{_iso(raw.get('start_time'))}|{host}"


def _record(run_id, source: str, raw: dict, config: dict, info: dict, series: dict, now=None) -> dict:
    start, stop = _time(raw.get("start_time")), _time(raw.get("stop_time"))
    end = stop or _time(raw.get("heartbeat"))
    name = (raw.get("experiment") or {}).get("name", "")
    return {
        "id": str(run_id), "source": source,
        "stage": info.get("stage") or name.removeprefix("tdrm."),
        "status": _status(raw, now),
        "start": _iso(start), "stop": _iso(stop),
        "duration_s": round((end - start).total_seconds(), 1) if start and end else None,
        "host": (raw.get("host") or {}).get("hostname"),
        "git_commit": info.get("git_commit"),
        "dvc_exp": info.get("dvc_exp_name"), "dvc_baseline": info.get("dvc_exp_baseline_rev"),
        "run_uid": _uid(raw, info),
        "params": {k: v for k, v in flatten(config).items()},
        "metrics": final_metrics(raw.get("result"), series),
    }


# -- stores --------------------------------------------------------------------------------------
class FileRuns:
    """Sacred FileStorage: <dir>/<id>/{run.json, config.json, info.json, metrics.json, cout.txt}."""

    source = "file"

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        if not self.dir.is_dir():
            raise FileNotFoundError(f"no Sacred runs directory at {self.dir} (set TDRM_RUNS_DIR, or run a stage first)")

    def ids(self) -> list[str]:
        ids = [p.name for p in self.dir.iterdir() if (p / "run.json").exists()]
        return sorted(ids, key=lambda s: (not s.isdigit(), int(s) if s.isdigit() else 0, s))

    def _json(self, run_dir: Path, name: str, default):
        p = run_dir / name
        if not p.exists():
            return default
        try:
            return json.loads(p.read_text())
        except json.JSONDecodeError:  # a run killed while writing: keep what can be read
            return default

    def load(self, run_id: str, now: datetime | None = None) -> Run:
        d = self.dir / str(run_id)
        if not (d / "run.json").exists():
            raise RunNotFound(f"no run {run_id!r} in {self.dir}")
        raw = self._json(d, "run.json", {})
        config, info = self._json(d, "config.json", {}), self._json(d, "info.json", {})
        series = {k: (v.get("steps", []), v.get("values", []))
                  for k, v in self._json(d, "metrics.json", {}).items()}
        cout = (d / "cout.txt").read_text(errors="replace") if (d / "cout.txt").exists() else ""
        return Run(_record(run_id, self.source, raw, config, info, series, now), config, info,
                   raw.get("result"), series, raw, cout)

    def timestamps(self, run_id: str) -> dict[str, list]:
        return {k: v.get("timestamps", []) for k, v in self._json(self.dir / str(run_id), "metrics.json", {}).items()}


class MongoRuns:
    """Sacred's MongoObserver layout: `runs` documents, `metrics` documents keyed by run_id."""

    source = "mongo"

    def __init__(self, url: str, db: str = "tdrm", timeout_ms: int = 3000, client=None):
        import pymongo

        self.url = mask_url(url)  # only the masked form is kept for messages
        self.client = client or pymongo.MongoClient(url, serverSelectionTimeoutMS=timeout_ms)
        try:
            self.client.admin.command("ping")
        except Exception as e:  # pymongo's connection errors have several types
            raise ConnectionError(f"MongoDB at {self.url} is unreachable ({type(e).__name__}: "
                                  f"{scrub(str(e), url)})") from None
        self.db = self.client[db]

    def ids(self) -> list[str]:
        ids = [d["_id"] for d in self.db.runs.find({}, {"_id": 1})]
        return [str(i) for i in sorted(ids, key=lambda i: (not isinstance(i, int), i if isinstance(i, int) else 0, str(i)))]

    def _key(self, run_id):
        return int(run_id) if str(run_id).isdigit() else run_id

    def load(self, run_id: str, now: datetime | None = None) -> Run:
        doc = self.db.runs.find_one({"_id": self._key(run_id)})
        if doc is None:
            raise RunNotFound(f"no run {run_id!r} in MongoDB {self.url} database {self.db.name}")
        series = {m["name"]: (list(m.get("steps", [])), list(m.get("values", [])))
                  for m in self.db.metrics.find({"run_id": doc["_id"]})}
        config, info = doc.get("config") or {}, doc.get("info") or {}
        return Run(_record(doc["_id"], self.source, doc, config, info, series, now), config, info,
                   doc.get("result"), series, doc, doc.get("captured_out") or "")

    def uids(self) -> set[str]:
        return {_uid(d, d.get("info") or {}) for d in self.db.runs.find({})}


def open_store(runs_dir: str | Path | None = None, mongo_url: str | None = None, mongo_db: str | None = None):
    """MongoDB when a URL is given (or TDRM_MONGO_URL is set), else the FileStorage directory."""
    from .sacred_run import runs_dir as default_dir

    url = mongo_url or os.environ.get("TDRM_MONGO_URL")
    if url:
        return MongoRuns(url, mongo_db or os.environ.get("TDRM_MONGO_DB", "tdrm"))
    return FileRuns(runs_dir or default_dir())


def list_runs(store, stage: str | None = None, status: str | None = None, now: datetime | None = None) -> list[dict]:
    out = []
    for i in store.ids():
        rec = store.load(i, now).record
        if (stage is None or rec["stage"] == stage) and (status is None or rec["status"] == status.upper()):
            out.append(rec)
    return out


def varying_keys(records: list[dict], section: str = "params") -> list[str]:
    """Keys whose value differs between the records (missing counts as a value)."""
    keys = sorted({k for r in records for k in r[section]})
    return [k for k in keys if len({json.dumps(r[section].get(k), sort_keys=True, default=str) for r in records}) > 1]


# -- sync ----------------------------------------------------------------------------------------
def _mongo_doc(run: Run, new_id: int) -> tuple[dict, list[dict]]:
    raw = dict(run.raw)
    for k in ("start_time", "stop_time", "heartbeat"):
        if raw.get(k):
            raw[k] = _time(raw[k])
    info = dict(run.info)
    info["run_uid"] = run.record["run_uid"]
    info["synced_from"] = {"source": "file", "id": run.record["id"]}
    metric_docs = [{"run_id": new_id, "name": name, "steps": list(steps), "values": list(vals),
                    "timestamps": []} for name, (steps, vals) in run.series.items()]
    doc = {**raw, "_id": new_id, "config": run.config, "info": info, "captured_out": run.captured_out,
           "artifacts": [], "format": "MongoObserver-0.7.0"}
    return doc, metric_docs


def sync_to_mongo(files: FileRuns, mongo: MongoRuns, progress=None) -> dict:
    """Copy FileStorage runs that MongoDB lacks; returns {"copied": [file ids], "skipped": [...]}.

    Metric series and captured output go along; artifacts (files) stay in FileStorage.
    """
    have = mongo.uids()
    ids = [d["_id"] for d in mongo.db.runs.find({}, {"_id": 1})]
    next_id = max([i for i in ids if isinstance(i, int)], default=0) + 1
    copied, skipped = [], []
    for rid in files.ids():
        run = files.load(rid)
        if run.record["run_uid"] in have:
            skipped.append(rid)
            continue
        doc, metric_docs = _mongo_doc(run, next_id)
        if metric_docs:
            res = mongo.db.metrics.insert_many(metric_docs)
            doc["info"]["metrics"] = [{"id": str(i), "name": m["name"]} for i, m in zip(res.inserted_ids, metric_docs)]
        mongo.db.runs.insert_one(doc)
        have.add(run.record["run_uid"])
        copied.append(rid)
        next_id += 1
        if progress:
            progress(rid, next_id - 1)
    return {"copied": copied, "skipped": skipped}
