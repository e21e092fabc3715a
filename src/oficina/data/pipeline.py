"""``oficina data prepare``: raw documents -> clean, deduplicated Parquet shards with a report.

    oficina data prepare examples/demo/reference.jsonl --out data/clean --config examples/data.yaml
    oficina data prepare 'crawl/**/*.html.gz' notes/ --out data/clean --engine ray

Input is read in a fixed order and cut into shards of ``shard_docs`` documents. Each shard goes
through the stages in YAML order and is committed atomically: ``part-NNNNN.parquet``, then the
dedup state it added (``_state/NNNNN.npz``: kept hashes and MinHash signatures), then its stats
(``_state/NNNNN.json``) last — the marker that the shard is finished. A rerun (after a crash or a
SIGKILL) replays the finished shards' dedup state and skips them, so near-dedup across shards
stays exact and the output equals an uninterrupted run. The report and manifest are rebuilt
from all shard stats at the end.

Engines: ``local`` runs everything in this process (``--workers N``: the per-document stages
and dedup keys on N local processes, decisions here). ``ray`` runs the per-document stages and
the dedup keys (hashes, MinHash signatures: the costly part) on Ray Data workers; the dedup
decisions stay on the driver, in document order, against every kept document of every shard —
so near duplicates are found across workers and shards, and the output equals the local one.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, field_validator
from tqdm import tqdm

from oficina.config import VerbConfig
from oficina.data.readers import Malformed, SourceConfig, expand_inputs, read_file, source_for
from oficina.data.stages import DedupStage, StageConfig, build
from oficina.data.stages.dedup import ExactDedupConfig, NearDedupConfig
from oficina.data.stages.langid import LangIdConfig
from oficina.data.stages.normalize import NormalizeConfig
from oficina.data.stages.pii import PIIConfig
from oficina.data.stages.quality import QualityConfig
from oficina.data.stages.spam import SpamConfig
from oficina.errors import UserError
from oficina.workspace import atomic_write_json, atomic_write_text, start_run

FORMAT = "oficina-data-v1"
# Fixed log-spaced bins of document length in characters, so shard histograms add up.
HIST_EDGES = [0.0] + [10 ** (k / 4) for k in range(0, 29)]


def default_stages() -> list:
    return [
        NormalizeConfig(),
        LangIdConfig(),
        QualityConfig(),
        SpamConfig(),
        PIIConfig(),
        ExactDedupConfig(),
        NearDedupConfig(),
    ]


class PrepareConfig(VerbConfig):
    """Read documents, run the cleaning stages in order, write Parquet shards and a report."""

    positionals = ("inputs",)
    inputs: list[str] = Field(
        default_factory=list,
        description="files, folders or globs (txt md html jsonl csv parquet, .gz/.zst)",
    )
    out: str = Field(description="output folder: *.parquet, manifest.json, report.json/html")
    sources: list[SourceConfig] = Field(
        default_factory=list, description="per-source licence, text field and format (YAML)"
    )
    stages: list[StageConfig] | None = Field(
        None,
        validate_default=True,
        description="cleaning stages in order, in YAML (default: normalize, langid, quality, "
        "spam, pii, exact_dedup, near_dedup; see oficina.data.stages)",
    )
    shard_docs: int = Field(5000, ge=1, description="documents per shard (the unit of resume)")
    engine: Literal["local", "ray"] = Field("local", description="where the stages run")
    workers: int = Field(1, ge=1, description="local engine: processes for the per-document stages")
    ray_address: str | None = Field(
        None, description="Ray cluster address (default: start a local Ray)"
    )
    restart: bool = Field(False, description="discard a previous run's shards in --out")
    examples_per_reason: int = Field(3, ge=0, description="removed examples kept in the report")

    @field_validator("stages")
    @classmethod
    def _unique_names(cls, v: list | None) -> list:
        if v is None:
            v = default_stages()
        names = [s.name or s.type for s in v]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(
                f"stage names must be unique; give 'name:' to the repeated {sorted(dup)}"
            )
        return v


# ---------------------------------------------------------------------------- stage plan


def _segments(stages: list) -> list[tuple[str, list[int]]]:
    """Consecutive map stages and consecutive dedup stages, in order; starts with a map run."""
    segs: list[tuple[str, list[int]]] = []
    for i, st in enumerate(stages):
        if segs and segs[-1][0] == st.kind:
            segs[-1][1].append(i)
        else:
            segs.append((st.kind, [i]))
    if not segs or segs[0][0] != "map":
        segs.insert(0, ("map", []))
    return segs


def apply_map_segment(
    docs: list[dict], stages: list, map_idx: list[int], key_idx: list[int]
) -> list[dict]:
    """Run map stages over docs (in place), then compute the keys of the dedup stages after them.

    Pure per document: it runs in this process or on a Ray worker. A removed document gets
    ``_removed = (stage index, reason)``; modifications go to ``_mods[stage index]``.
    """
    for doc in docs:
        if "_removed" in doc:
            continue
        for i in map_idx:
            reason, mods = stages[i].process(doc)
            if mods:
                doc.setdefault("_mods", {})[i] = mods
            if reason is not None:
                doc["_removed"] = (i, reason)
                break
        else:
            for i in key_idx:
                doc.setdefault("_keys", {})[i] = stages[i].key(doc["text"])
    return docs


class _LocalExecutor:
    def __init__(self, stages: list):
        self.stages = stages

    def __call__(self, docs: list[dict], map_idx: list[int], key_idx: list[int]) -> list[dict]:
        return apply_map_segment(docs, self.stages, map_idx, key_idx)

    def close(self) -> None:
        pass


def _pool_task(cfg_blob: bytes, docs: list[dict], map_idx: list[int], key_idx: list[int]):
    return apply_map_segment(docs, _stages_from_blob(cfg_blob), map_idx, key_idx)


class _PoolExecutor:
    """Map segments on a pool of local processes (``workers > 1``): same stages, same order."""

    def __init__(self, stage_cfgs: list, workers: int):
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        self.cfg_blob = pickle.dumps([c.model_dump(mode="json") for c in stage_cfgs])
        # spawn, not fork: the parent may hold threads (tokenizers, Ray) that fork would copy.
        self.pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"))
        self.workers = workers

    def __call__(self, docs: list[dict], map_idx: list[int], key_idx: list[int]) -> list[dict]:
        if not docs:
            return docs
        step = max(1, -(-len(docs) // (self.workers * 4)))
        parts = [docs[i : i + step] for i in range(0, len(docs), step)]
        futures = [self.pool.submit(_pool_task, self.cfg_blob, p, map_idx, key_idx) for p in parts]
        return [d for f in futures for d in f.result()]

    def close(self) -> None:
        self.pool.shutdown(cancel_futures=True)


class _RayExecutor:
    """Map segments on Ray Data; documents travel as pickled blobs (our own objects only)."""

    def __init__(self, stage_cfgs: list, address: str | None):
        import logging

        import ray

        logging.getLogger("ray.data").setLevel(logging.WARNING)
        if not ray.is_initialized():
            kwargs = {"address": address} if address else {"num_cpus": os.cpu_count() or 1}
            ray.init(
                ignore_reinit_error=True,
                include_dashboard=False,
                log_to_driver=False,
                logging_level=logging.WARNING,
                **kwargs,
            )
            self._started = True
        else:
            self._started = False
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        dumped = [c.model_dump(mode="json") for c in stage_cfgs]
        for c in dumped:  # workers may run elsewhere: ship absolute paths
            if "eval_files" in c:
                c["eval_files"] = [str(Path(f).resolve()) for f in c["eval_files"]]
        self.cfg_blob = pickle.dumps(dumped)

    def __call__(self, docs: list[dict], map_idx: list[int], key_idx: list[int]) -> list[dict]:
        import ray

        if not docs:
            return docs
        cfg_blob = self.cfg_blob
        n_blocks = max(1, min(len(docs) // 50, 8 * (os.cpu_count() or 1)))

        def fn(batch: dict) -> dict:
            stages = _stages_from_blob(cfg_blob)
            out = [
                pickle.dumps(apply_map_segment([pickle.loads(b)], stages, map_idx, key_idx)[0])
                for b in batch["blob"]
            ]
            return {"i": batch["i"], "blob": np.array(out, dtype=object)}

        ds = ray.data.from_items(
            [{"i": i, "blob": pickle.dumps(d)} for i, d in enumerate(docs)],
            override_num_blocks=n_blocks,
        )
        rows = ds.map_batches(fn, batch_size=64).take_all()
        rows.sort(key=lambda r: r["i"])
        return [pickle.loads(r["blob"]) for r in rows]

    def close(self) -> None:
        if self._started:
            import ray

            ray.shutdown()


_STAGE_CACHE: dict[bytes, list] = {}


def _stages_from_blob(blob: bytes) -> list:
    """Build stages once per worker process (langid model, eval n-grams are loaded once)."""
    if blob not in _STAGE_CACHE:
        from pydantic import TypeAdapter

        adapter = TypeAdapter(list[StageConfig])
        _STAGE_CACHE[blob] = [build(c) for c in adapter.validate_python(pickle.loads(blob))]
    return _STAGE_CACHE[blob]


# ---------------------------------------------------------------------------- one shard


def _hist(lengths: list[int]) -> list[int]:
    return np.histogram(np.asarray(lengths, dtype=float), bins=HIST_EDGES)[0].tolist()


def process_shard(
    docs: list[dict], stages: list, segments: list, executor, examples_per_reason: int
) -> tuple[list[dict], dict]:
    """Kept documents (in input order) and the shard's stats."""
    bytes_in = sum(len(d["text"].encode("utf-8")) for d in docs)
    # Executors keep document order (Ray ships copies), so position identifies a document.
    original = [d["text"] for d in docs]
    for si, (kind, idx) in enumerate(segments):
        if kind == "map":
            nxt = segments[si + 1][1] if si + 1 < len(segments) else []
            docs = executor(docs, idx, nxt)
        else:
            for doc in docs:
                if "_removed" in doc:
                    continue
                keys = doc.pop("_keys", {})
                for i in idx:
                    reason = stages[i].decide(doc, keys[i])
                    if reason is not None:
                        doc["_removed"] = (i, reason)
                        break
    stats = {
        "docs_in": len(docs),
        "bytes_in": bytes_in,
        "stages": [{"in": 0, "removed": {}, "modified": {}} for _ in stages],
        "examples": {},
        "languages": {},
        "sources": {},
        "licences": {},
    }
    kept, lens_kept, lens_removed = [], [], []
    for doc, text_in in zip(docs, original, strict=True):
        doc.pop("_keys", None)
        last = doc["_removed"][0] if "_removed" in doc else len(stages) - 1
        for i in range(last + 1):
            stats["stages"][i]["in"] += 1
        for i, mods in doc.pop("_mods", {}).items():
            m = stats["stages"][int(i)]["modified"]
            for k, v in mods.items():
                m[k] = m.get(k, 0) + v
        if "_removed" in doc:
            i, reason = doc.pop("_removed")
            r = stats["stages"][i]["removed"]
            r[reason] = r.get(reason, 0) + 1
            key = f"{stages[i].name}/{reason}"
            ex = stats["examples"].setdefault(key, [])
            if len(ex) < examples_per_reason:
                # The text as it came in: what the reader needs to judge the removal.
                item = {"id": doc["id"], "source": doc["source"], "text": text_in[:400]}
                if "_duplicate_of" in doc:
                    item["duplicate_of"] = doc["_duplicate_of"]
                ex.append(item)
            lens_removed.append(len(text_in))
            continue
        doc.pop("_duplicate_of", None)
        kept.append(doc)
        lens_kept.append(len(doc["text"]))
        for field, key in (("languages", "lang"), ("sources", "source"), ("licences", "licence")):
            v = str(doc.get(key) or "unknown")
            stats[field][v] = stats[field].get(v, 0) + 1
    stats["docs_out"] = len(kept)
    stats["bytes_out"] = sum(len(d["text"].encode("utf-8")) for d in kept)
    stats["hist_kept"] = _hist(lens_kept)
    stats["hist_removed"] = _hist(lens_removed)
    return kept, stats


def _write_parquet(path: Path, docs: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "id": pa.array([d["id"] for d in docs], pa.string()),
            "text": pa.array([d["text"] for d in docs], pa.string()),
            "source": pa.array([d["source"] for d in docs], pa.string()),
            "licence": pa.array([d["licence"] for d in docs], pa.string()),
            "lang": pa.array([d.get("lang") for d in docs], pa.string()),
            "lang_score": pa.array([d.get("lang_score") for d in docs], pa.float32()),
            "metadata": pa.array(
                [
                    json.dumps(d.get("metadata") or {}, ensure_ascii=False, default=str)
                    for d in docs
                ],
                pa.string(),
            ),
        }
    )
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
    np.savez(tmp, **arrays)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


# ---------------------------------------------------------------------------- the run


def _plan(cfg: PrepareConfig, files: list[Path]) -> dict:
    """What must not change between a run and its resume: inputs, stages, sources, sharding."""
    ident = {
        "format": FORMAT,
        "inputs": [[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in files],
        "stages": [s.model_dump(mode="json") for s in cfg.stages],
        "sources": [s.model_dump(mode="json") for s in cfg.sources],
        "shard_docs": cfg.shard_docs,
    }
    ident["hash"] = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
    return ident


def _shard_stream(files: list[Path], sources: list[SourceConfig], shard_docs: int):
    """(docs, malformed) per shard, in a fixed order; malformed records ride with their shard."""
    docs: list[dict] = []
    bad: list[Malformed] = []
    for path in files:
        for item in read_file(path, source_for(path, sources)):
            if isinstance(item, Malformed):
                bad.append(item)
                continue
            docs.append(item)
            if len(docs) == shard_docs:
                yield docs, bad
                docs, bad = [], []
    if docs or bad:
        yield docs, bad


def _merge(a: dict, b: dict) -> dict:
    for k, v in b.items():
        a[k] = a.get(k, 0) + v
    return a


def run(cfg: PrepareConfig) -> int:
    if not cfg.inputs:
        raise UserError("give at least one input file, folder or glob")
    files = expand_inputs(cfg.inputs)
    out = Path(cfg.out)
    out_res = out.resolve()
    if any(f.resolve().is_relative_to(out_res) for f in files) and (out / "manifest.json").exists():
        raise UserError(f"--out {out} is also an input; write the cleaned copy to another folder")
    state = out / "_state"
    plan = _plan(cfg, files)
    if cfg.restart and state.exists():
        shutil.rmtree(state)
        for p in out.glob("part-*.parquet"):
            p.unlink()
    if (state / "plan.json").exists():
        old = json.loads((state / "plan.json").read_text())
        if old.get("hash") != plan["hash"]:
            raise UserError(
                f"{out} holds a run with other inputs or settings; use another --out or --restart"
            )
    state.mkdir(parents=True, exist_ok=True)
    atomic_write_json(state / "plan.json", plan)
    for stale in [*out.glob(".*.tmp*"), *state.glob(".*.tmp*")]:  # half-written by a killed run
        stale.unlink(missing_ok=True)

    stages = [build(c) for c in cfg.stages]
    segments = _segments(stages)
    dedups = [s for s in stages if isinstance(s, DedupStage)]

    with start_run("data prepare", cfg) as run:
        for spec in cfg.inputs:
            run.add_input("input", spec)
        t0 = time.time()
        if cfg.engine == "ray":
            executor = _RayExecutor(cfg.stages, cfg.ray_address)
        elif cfg.workers > 1:
            executor = _PoolExecutor(cfg.stages, cfg.workers)
        else:
            executor = _LocalExecutor(stages)
        shard_stats: list[dict] = []
        skipped = processed_docs = processed_bytes = 0
        resuming = True
        bar = tqdm(unit="doc", desc="prepare", disable=None, mininterval=1.0)
        try:
            for n, (docs, bad) in enumerate(_shard_stream(files, cfg.sources, cfg.shard_docs)):
                marker = state / f"{n:05d}.json"
                if resuming and marker.exists():
                    # Finished earlier: replay its dedup state, keep its stats, do no work.
                    with np.load(state / f"{n:05d}.npz", allow_pickle=False) as z:
                        for j, st in enumerate(dedups):
                            st.load_shard_state(
                                {k.split("/", 1)[1]: z[k] for k in z.files if k.startswith(f"{j}/")}
                            )
                    shard_stats.append(json.loads(marker.read_text()))
                    skipped += 1
                    bar.update(len(docs))
                    continue
                resuming = False  # shards are sequential: everything after a gap is redone
                kept, stats = process_shard(
                    docs, stages, segments, executor, cfg.examples_per_reason
                )
                stats["shard"] = n
                stats["file"] = f"part-{n:05d}.parquet"
                stats["malformed"] = dict(Counter(b.reason for b in bad))
                stats["quarantine"] = [b.to_dict() for b in bad]
                _write_parquet(out / stats["file"], kept)
                arrays = {}
                for j, st in enumerate(dedups):
                    arrays.update({f"{j}/{k}": v for k, v in st.take_shard_state().items()})
                _save_npz(state / f"{n:05d}.npz", arrays)
                atomic_write_json(marker, stats)  # last: the shard is now finished
                shard_stats.append(stats)
                processed_docs += stats["docs_in"]
                processed_bytes += stats["bytes_in"]
                bar.update(len(docs))
        finally:
            bar.close()
            executor.close()
        wall = time.time() - t0
        report = build_report(cfg, shard_stats, files, wall, processed_docs, processed_bytes)
        report["resumed_shards"] = skipped
        quarantine = "".join(
            json.dumps(q, ensure_ascii=False) + "\n" for s in shard_stats for q in s["quarantine"]
        )
        atomic_write_text(out / "quarantine.jsonl", quarantine)
        manifest = {
            "format": FORMAT,
            "plan": plan["hash"],
            "docs": report["docs_kept"],
            "shards": [
                {"file": s["file"], "docs": s["docs_out"], "bytes": s["bytes_out"]}
                for s in shard_stats
            ],
            "columns": ["id", "text", "source", "licence", "lang", "lang_score", "metadata"],
        }
        atomic_write_json(out / "manifest.json", manifest)
        atomic_write_json(out / "report.json", report)
        from oficina.data.report import write_html

        write_html(out / "report.html", report)
        run.add_output("data", out)
        run.summary.update(
            {
                "docs_in": report["docs_in"],
                "docs_kept": report["docs_kept"],
                "malformed": report["malformed_total"],
                "wall_time_s": round(wall, 3),
                "docs_per_s": report["throughput"]["docs_per_s"],
                "mb_per_s": report["throughput"]["mb_per_s"],
                "report": str((out / "report.html").resolve()),
            }
        )
    _print_summary(report, out)
    return 0


def build_report(
    cfg: PrepareConfig,
    shard_stats: list[dict],
    files: list[Path],
    wall: float,
    processed_docs: int,
    processed_bytes: int,
) -> dict:
    stages_out = []
    for i, c in enumerate(cfg.stages):
        removed: dict = {}
        modified: dict = {}
        n_in = 0
        for s in shard_stats:
            st = s["stages"][i]
            n_in += st["in"]
            _merge(removed, st["removed"])
            _merge(modified, st["modified"])
        total = sum(removed.values())
        stages_out.append(
            {
                "name": c.name or c.type,
                "type": c.type,
                "in": n_in,
                "kept": n_in - total,
                "removed_total": total,
                "removed": dict(sorted(removed.items(), key=lambda kv: -kv[1])),
                "modified": modified,
            }
        )
    examples: dict[str, list] = {}
    for s in shard_stats:
        for k, v in s["examples"].items():
            room = cfg.examples_per_reason - len(examples.setdefault(k, []))
            examples[k] += v[: max(0, room)]
    malformed: dict = {}
    for s in shard_stats:
        _merge(malformed, s["malformed"])
    hist_k = np.sum([s["hist_kept"] for s in shard_stats], axis=0).tolist() if shard_stats else []
    hist_r = (
        np.sum([s["hist_removed"] for s in shard_stats], axis=0).tolist() if shard_stats else []
    )
    docs_in = sum(s["docs_in"] for s in shard_stats)
    bytes_in = sum(s["bytes_in"] for s in shard_stats)
    return {
        "format": FORMAT,
        "inputs": [str(f) for f in files],
        "engine": cfg.engine,
        "docs_in": docs_in,
        "docs_kept": sum(s["docs_out"] for s in shard_stats),
        "docs_removed": docs_in - sum(s["docs_out"] for s in shard_stats),
        "bytes_in": bytes_in,
        "bytes_kept": sum(s["bytes_out"] for s in shard_stats),
        "malformed": malformed,
        "malformed_total": sum(malformed.values()),
        "stages": stages_out,
        "languages": _sum_counts(shard_stats, "languages"),
        "sources": _sum_counts(shard_stats, "sources"),
        "licences": _sum_counts(shard_stats, "licences"),
        "length_histogram": {"edges": HIST_EDGES, "kept": hist_k, "removed": hist_r},
        "examples": examples,
        "shards": [s["file"] for s in shard_stats],
        "throughput": {
            "wall_time_s": round(wall, 3),
            "docs_processed": processed_docs,
            "docs_per_s": round(processed_docs / wall, 1) if wall > 0 else None,
            "mb_per_s": round(processed_bytes / 1e6 / wall, 3) if wall > 0 else None,
        },
    }


def _sum_counts(shard_stats: list[dict], field: str) -> dict:
    total: dict = {}
    for s in shard_stats:
        _merge(total, s[field])
    return dict(sorted(total.items(), key=lambda kv: -kv[1]))


def _print_summary(report: dict, out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console(stderr=False)
    t = Table(title=f"data prepare: {report['docs_in']} documents in, {report['docs_kept']} kept")
    for col in ("stage", "in", "kept", "removed", "reasons", "modified"):
        t.add_column(col)
    for s in report["stages"]:
        t.add_row(
            s["name"],
            str(s["in"]),
            str(s["kept"]),
            str(s["removed_total"]),
            ", ".join(f"{k} {v}" for k, v in s["removed"].items()),
            ", ".join(f"{k} {v}" for k, v in s["modified"].items()),
        )
    con.print(t)
    if report["malformed_total"]:
        con.print(
            f"malformed: {report['malformed_total']} "
            f"({', '.join(f'{k} {v}' for k, v in report['malformed'].items())}) -> {out / 'quarantine.jsonl'}"
        )
    th = report["throughput"]
    con.print(f"{th['docs_per_s']} docs/s, {th['mb_per_s']} MB/s, {th['wall_time_s']} s")
    if report.get("resumed_shards"):
        con.print(f"resumed: {report['resumed_shards']} finished shards skipped")
    print(f"report: {(out / 'report.html').resolve()}")
    print(f"report: {(out / 'report.json').resolve()}")
