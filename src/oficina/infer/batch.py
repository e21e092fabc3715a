"""``oficina batch``: offline (bulk) inference over a JSONL, cached in SQLite, resumable.

    oficina batch smollm2-135m-instruct --input prompts.jsonl --output results.jsonl
    oficina batch lookup smollm2-135m-instruct --input prompts.jsonl --output answers.jsonl
    oficina batch smollm2-135m-instruct --input prompts.jsonl --output out.jsonl --engine ray

The seed's pattern: compute answers ahead of time, then serve them by lookup. Input rows hold
``prompt`` (text) or ``messages`` (chat), an optional ``id``, and optional per-row sampling
overrides (max_new_tokens, temperature, top_k, top_p, repetition_penalty, stop, seed).

* **Cache.** Every result is stored in the workspace database (table ``infer_cache``) under
  sha256(model content hash, rendered prompt, every sampling parameter). A rerun makes no model
  call; changing the model's weights/tokenizer/adapter, the prompt or any parameter is a miss.
  A sampled row without a seed is cached too: the first sample becomes *the* answer.
* **Resumable.** Results are appended to the output and flushed (fsync) after each batch, in
  input order. Restarted after a kill, the run keeps the complete lines already written (a
  torn last line is dropped) and continues: exactly one result per input.
* **Bad rows** are counted and set aside as ``{"index", "id", "error"}`` lines, never a crash.
* ``lookup`` answers from the cache alone (no model forward); ``lookup()`` is the same for the
  server.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Literal

from pydantic import Field

from oficina.config import VerbConfig
from oficina.errors import NotFound, UserError
from oficina.infer.engine import SamplingParams
from oficina.infer.generate import unescape

OVERRIDES = (
    "max_new_tokens",
    "temperature",
    "top_k",
    "top_p",
    "repetition_penalty",
    "stop",
    "seed",
)
TABLE = """
CREATE TABLE IF NOT EXISTS infer_cache (
  key TEXT PRIMARY KEY, model_hash TEXT NOT NULL, prompt TEXT NOT NULL, params TEXT NOT NULL,
  text TEXT NOT NULL, finish_reason TEXT, prompt_tokens INTEGER, completion_tokens INTEGER,
  created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS infer_cache_model ON infer_cache(model_hash);
"""


# ---------------------------------------------------------------------------- the cache


def _key_params(params: SamplingParams | dict) -> dict:
    d = asdict(params) if isinstance(params, SamplingParams) else dict(params)
    return {k: d.get(k, getattr(SamplingParams(), k)) for k in OVERRIDES}


def cache_key(model_hash: str, prompt: str, params: SamplingParams | dict) -> str:
    """sha256 of (model content hash, rendered prompt, every sampling parameter)."""
    blob = json.dumps(
        {"model": model_hash, "prompt": prompt, "params": _key_params(params)},
        sort_keys=True,
        ensure_ascii=False,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def _connect():
    from oficina.workspace import connect, retry_locked

    con = connect()
    retry_locked(lambda: con.executescript(TABLE))
    return con


def lookup_row(
    model_hash: str, prompt: str, params: SamplingParams | dict, con=None
) -> dict | None:
    """The cached result (text, finish_reason, token counts) or None."""
    own = con is None
    con = con or _connect()
    try:
        r = con.execute(
            "SELECT text, finish_reason, prompt_tokens, completion_tokens FROM infer_cache WHERE key=?",
            (cache_key(model_hash, prompt, params),),
        ).fetchone()
        return dict(r) if r else None
    finally:
        if own:
            con.close()


def lookup(model_hash: str, prompt: str, params: SamplingParams | dict | None = None) -> str | None:
    """The cached completion text for this model, rendered prompt and parameters, or None."""
    row = lookup_row(model_hash, prompt, params if params is not None else SamplingParams())
    return row["text"] if row else None


def _store(con, model_hash: str, items: list[tuple[str, SamplingParams, dict]]) -> None:
    con.execute("BEGIN IMMEDIATE")
    try:
        for prompt, params, res in items:
            con.execute(
                "INSERT OR REPLACE INTO infer_cache VALUES (?,?,?,?,?,?,?,?,?)",
                (
                    cache_key(model_hash, prompt, params),
                    model_hash,
                    prompt,
                    json.dumps(_key_params(params)),
                    res["text"],
                    res["finish_reason"],
                    res["prompt_tokens"],
                    res["completion_tokens"],
                    time.time(),
                ),
            )
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


# ---------------------------------------------------------------------------- configs


class _BatchBase(VerbConfig):
    positionals = ("model",)
    model: str = Field(description="model spec: packaged name, preset, HF dir, .gguf or hub id")
    input: str = Field(
        description="JSONL of rows with 'prompt' or 'messages' (+ optional 'id', overrides)"
    )
    output: str = Field(description="JSONL of results, one per input row, in input order")
    max_new_tokens: int = Field(128, ge=0, description="most tokens per answer (rows may override)")
    temperature: float = Field(0.0, ge=0, description="0 = greedy (rows may override)")
    top_k: int = Field(0, ge=0, description="top-k sampling, 0 = off")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling")
    repetition_penalty: float = Field(1.0, gt=0, description="> 1 discourages repeats")
    stop: list[str] = Field(default_factory=list, description="stop strings; '\\n' is a newline")
    seed: int | None = Field(None, description="sampling seed (rows may override)")
    chat: bool | None = Field(
        None,
        description="wrap 'prompt' rows in the chat template (default: when the model has one)",
    )
    dtype: Literal["float32", "bfloat16"] = Field("float32", description="weights dtype")
    adapter: str | None = Field(None, description="a PEFT LoRA adapter directory")
    overwrite: bool = Field(False, description="start the output afresh instead of resuming it")


class BatchConfig(_BatchBase):
    """Run a JSONL of prompts through a model in batches, caching every result."""

    batch_size: int = Field(8, ge=1, description="prompts per forward batch")
    engine: Literal["local", "ray"] = Field("local", description="run batches here or on Ray Data")
    ray_address: str | None = Field(None, description="Ray cluster address (default: a local Ray)")


class LookupConfig(_BatchBase):
    """Answer a JSONL of prompts from the cache alone (no model forward); misses are reported."""


# ---------------------------------------------------------------------------- rows


def read_rows(path: str | Path) -> list[dict | str]:
    """Each line -> a dict, or an error message for a malformed line (kept, so order holds)."""
    p = Path(path)
    if not p.is_file():
        raise NotFound(f"input file not found: {p}")
    rows: list[dict | str] = []
    with open(p, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                rows.append(f"line {n}: not valid JSON")
                continue
            rows.append(row if isinstance(row, dict) else f"line {n}: not a JSON object")
    return rows


def _row_params(cfg: _BatchBase, row: dict) -> SamplingParams:
    base = {k: getattr(cfg, k) for k in OVERRIDES}
    base["stop"] = [unescape(s) for s in base["stop"]]
    extra = set(row) - set(OVERRIDES) - {"id", "prompt", "messages"}
    if extra:
        raise UserError(f"unknown field(s) {sorted(extra)}")
    for k in OVERRIDES:
        if k in row:
            base[k] = row[k]
    if isinstance(base["stop"], str):
        base["stop"] = [base["stop"]]
    try:
        p = SamplingParams(**base)
        p.validate()
    except TypeError as e:
        raise UserError(str(e)) from None
    for k, typ in (
        ("max_new_tokens", int),
        ("top_k", int),
        ("temperature", (int, float)),
        ("top_p", (int, float)),
        ("repetition_penalty", (int, float)),
    ):
        if not isinstance(getattr(p, k), typ) or isinstance(getattr(p, k), bool):
            raise UserError(f"{k} must be a number, got {getattr(p, k)!r}")
    if p.seed is not None and not isinstance(p.seed, int):
        raise UserError(f"seed must be an integer, got {p.seed!r}")
    return p


def _render(row: dict, tokenizer, chat: bool | None) -> str:
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if "messages" in row:
        msgs = row["messages"]
        if (
            not isinstance(msgs, list)
            or not msgs
            or not all(
                isinstance(m, dict)
                and isinstance(m.get("role"), str)
                and isinstance(m.get("content"), str)
                for m in msgs
            )
        ):
            raise UserError("'messages' must be a list of {role, content}")
        if not has_template:
            raise UserError("'messages' needs a model with a chat template")
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    if not isinstance(row.get("prompt"), str):
        raise UserError("row needs a text 'prompt' or a 'messages' list")
    use_chat = has_template if chat is None else chat
    if use_chat:
        if not has_template:
            raise UserError("--chat needs a model with a chat template")
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": row["prompt"]}], tokenize=False, add_generation_prompt=True
        )
    return row["prompt"]


def prepare(cfg: _BatchBase, tokenizer) -> list[dict]:
    """Input rows -> jobs: {index, id, prompt, params} or {index, id, error}."""
    jobs = []
    for i, row in enumerate(read_rows(cfg.input)):
        if isinstance(row, str):
            jobs.append({"index": i, "id": None, "error": row})
            continue
        rid = row.get("id", i)
        try:
            jobs.append(
                {
                    "index": i,
                    "id": rid,
                    "prompt": _render(row, tokenizer, cfg.chat),
                    "params": _row_params(cfg, row),
                }
            )
        except UserError as e:
            jobs.append({"index": i, "id": rid, "error": str(e)})
    return jobs


# ---------------------------------------------------------------------------- output (resume)


def resume_output(path: Path, jobs: list[dict], overwrite: bool) -> int:
    """How many results the output already holds (a torn last line is cut off)."""
    if overwrite or not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
        return 0
    data = path.read_bytes()
    good_end, done = 0, 0
    for line in data.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break  # killed mid-write: this line is incomplete
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            break
        if (
            done >= len(jobs)
            or row.get("index") != jobs[done]["index"]
            or row.get("id") != jobs[done]["id"]
        ):
            raise UserError(
                f"{path} holds results of another input (line {done + 1} does not match); "
                "use --overwrite or another --output"
            )
        done += 1
        good_end += len(line)
    if good_end < len(data):
        with open(path, "r+b") as f:
            f.truncate(good_end)
    return done


def _append(path: Path, rows: list[dict]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _result(job: dict, res: dict, cached: bool) -> dict:
    return {
        "index": job["index"],
        "id": job["id"],
        "text": res["text"],
        "finish_reason": res["finish_reason"],
        "prompt_tokens": res["prompt_tokens"],
        "completion_tokens": res["completion_tokens"],
        "cached": cached,
    }


# ---------------------------------------------------------------------------- runners


class _LocalRunner:
    def __init__(self, cfg: BatchConfig):
        from oficina.infer.engine import Engine

        self.engine = Engine.from_spec(cfg.model, dtype=cfg.dtype, adapter=cfg.adapter)

    def run(self, batches: list[list[tuple[str, SamplingParams]]]):
        for batch in batches:
            comps = self.engine.generate([p for p, _ in batch], [s for _, s in batch])
            yield [
                {
                    "text": c.text,
                    "finish_reason": c.finish_reason,
                    "prompt_tokens": c.prompt_tokens,
                    "completion_tokens": c.completion_tokens,
                }
                for c in comps
            ]


class _RayPredictor:
    """A Ray Data actor: loads the engine once, generates one batch per call."""

    def __init__(self, model: str, dtype: str, adapter: str | None):
        from oficina.infer.engine import Engine

        self.engine = Engine.from_spec(model, dtype=dtype, adapter=adapter)

    def __call__(self, batch: dict) -> dict:
        params = [SamplingParams(**json.loads(p)) for p in batch["params"]]
        comps = self.engine.generate(list(batch["prompt"]), params)
        return {
            "batch_no": list(batch["batch_no"]),
            "result": [
                json.dumps(
                    {
                        "text": c.text,
                        "finish_reason": c.finish_reason,
                        "prompt_tokens": c.prompt_tokens,
                        "completion_tokens": c.completion_tokens,
                    }
                )
                for c in comps
            ],
        }


class _RayRunner:
    def __init__(self, cfg: BatchConfig):
        import ray

        if not ray.is_initialized():
            kw = (
                {"address": cfg.ray_address}
                if cfg.ray_address
                else {"num_cpus": os.cpu_count() or 1}
            )
            ray.init(include_dashboard=False, log_to_driver=False, ignore_reinit_error=True, **kw)
        self.cfg = cfg

    def run(self, batches: list[list[tuple[str, SamplingParams]]]):
        import ray

        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True  # results come back in input order
        ctx.enable_progress_bars = False
        items = [
            {"batch_no": b, "prompt": p, "params": json.dumps(asdict(s))}
            for b, batch in enumerate(batches)
            for p, s in batch
        ]
        ds = ray.data.from_items(items).map_batches(
            _RayPredictor,
            fn_constructor_kwargs={
                "model": self.cfg.model,
                "dtype": self.cfg.dtype,
                "adapter": self.cfg.adapter,
            },
            batch_size=self.cfg.batch_size,
            concurrency=1,
            batch_format="default",
        )
        # Stream results back per batch so each batch is cached and written as soon as it is done.
        pending: list[dict] = []
        want = 0
        for row in ds.iter_rows():
            pending.append(json.loads(row["result"]))
            if len(pending) == len(batches[want]):
                yield pending
                pending, want = [], want + 1


def run(cfg: BatchConfig) -> int:
    from tqdm import tqdm

    from oficina.infer.engine import model_hash_for
    from oficina.models.safety import check_adapter_dir
    from oficina.models.sources import load_tokenizer, resolve
    from oficina.workspace import start_run

    with start_run("batch", cfg) as rec:
        rec.add_input("input", cfg.input)
        path = resolve(cfg.model)
        rec.add_input("model", path)
        if cfg.adapter:  # before the output is touched: its weights may be needed below
            check_adapter_dir(cfg.adapter)
        tokenizer = load_tokenizer(cfg.model)
        mhash = model_hash_for(path, cfg.adapter, cfg.dtype)
        jobs = prepare(cfg, tokenizer)
        out = Path(cfg.output)
        done = resume_output(out, jobs, cfg.overwrite)
        con = _connect()
        todo = jobs[done:]
        # Split the remaining rows into output chunks of batch_size; answer hits from the cache.
        chunks = [todo[i : i + cfg.batch_size] for i in range(0, len(todo), cfg.batch_size)]
        resolved: list[list[dict | None]] = []
        to_run: list[list[tuple[str, SamplingParams]]] = []
        where: list[list[tuple[int, int]]] = []  # for each model batch: (chunk, position) per row
        hits = errors = 0
        for c, chunk in enumerate(chunks):
            slot: list[dict | None] = []
            seen: dict[str, int] = {}
            for j, job in enumerate(chunk):
                if "error" in job:
                    slot.append({"index": job["index"], "id": job["id"], "error": job["error"]})
                    errors += 1
                    continue
                hit = lookup_row(mhash, job["prompt"], job["params"], con)
                if hit:
                    slot.append(_result(job, hit, True))
                    hits += 1
                    continue
                slot.append(None)
                key = cache_key(mhash, job["prompt"], job["params"])
                if key not in seen:  # the same prompt twice in a batch runs once
                    seen[key] = len(seen)
                    if not where or len(where[-1]) == 0 or where[-1][0][0] != c:
                        to_run.append([])
                        where.append([])
                    to_run[-1].append((job["prompt"], job["params"]))
                    where[-1].append((c, j))
            resolved.append(slot)
        runner = (_RayRunner if cfg.engine == "ray" else _LocalRunner)(cfg) if to_run else None
        results = runner.run(to_run) if runner else iter(())
        bar = tqdm(total=len(jobs), initial=done, desc="batch", unit="row", file=sys.stderr)
        gen_tokens, model_calls, t_model, t0 = 0, 0, 0.0, time.perf_counter()
        next_batch = 0
        for c, chunk in enumerate(chunks):
            while next_batch < len(where) and where[next_batch][0][0] == c:
                tb = time.perf_counter()
                outs = next(results)
                t_model += time.perf_counter() - tb
                model_calls += 1
                _store(
                    con,
                    mhash,
                    [(p, s, r) for (p, s), r in zip(to_run[next_batch], outs, strict=True)],
                )
                by_key = {
                    cache_key(mhash, p, s): r
                    for (p, s), r in zip(to_run[next_batch], outs, strict=True)
                }
                gen_tokens += sum(r["completion_tokens"] for r in outs)
                for j, job in enumerate(chunk):
                    if resolved[c][j] is None:
                        r = by_key.get(cache_key(mhash, job["prompt"], job["params"]))
                        if r is not None:
                            resolved[c][j] = _result(job, r, False)
                next_batch += 1
            _append(out, resolved[c])
            bar.update(len(chunk))
            bar.set_postfix(tok_s=f"{gen_tokens / t_model:.1f}" if t_model else "-")
        bar.close()
        con.close()
        wall = time.perf_counter() - t0
        rec.add_output("results", out)
        stats = {
            "rows": len(jobs),
            "resumed_from": done,
            "cache_hits": hits,
            "generated": sum(len(b) for b in to_run),
            "errors": errors,
            "model_batches": model_calls,
            "completion_tokens": gen_tokens,
            "tokens_per_s": round(gen_tokens / t_model, 2) if t_model else 0.0,
            "wall_time_s": round(wall, 3),
            "engine": cfg.engine,
            "model_hash": mhash,
        }
        rec.summary.update(stats)
        rec.log(stats)
        print(
            f"{len(jobs)} rows ({done} already done, {hits} from cache, {stats['generated']} generated, "
            f"{errors} bad) -> {out}; {gen_tokens} tokens at {stats['tokens_per_s']} tokens/s, "
            f"{wall:.1f}s; run {rec.id}",
            file=sys.stderr,
        )
    return 0


def lookup_cmd_rows(cfg: LookupConfig) -> tuple[list[dict], int, int]:
    from oficina.infer.engine import model_hash_for
    from oficina.models.sources import load_tokenizer, resolve

    path = resolve(cfg.model)
    mhash = model_hash_for(path, cfg.adapter, cfg.dtype)
    jobs = prepare(cfg, load_tokenizer(cfg.model))
    con = _connect()
    out, hits, misses = [], 0, 0
    try:
        for job in jobs:
            if "error" in job:
                out.append({"index": job["index"], "id": job["id"], "error": job["error"]})
                continue
            hit = lookup_row(mhash, job["prompt"], job["params"], con)
            if hit:
                hits += 1
                out.append(_result(job, hit, True))
            else:
                misses += 1
                out.append({"index": job["index"], "id": job["id"], "miss": True})
    finally:
        con.close()
    return out, hits, misses


def lookup_verb(cfg: LookupConfig) -> int:
    from oficina.workspace import atomic_write_text, start_run

    with start_run("batch lookup", cfg) as rec:
        rec.add_input("input", cfg.input)
        rows, hits, misses = lookup_cmd_rows(cfg)
        atomic_write_text(
            cfg.output, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        )
        rec.add_output("results", cfg.output)
        rec.summary.update(rows=len(rows), hits=hits, misses=misses)
        print(
            f"{len(rows)} rows: {hits} answered from the cache, {misses} misses -> {cfg.output}",
            file=sys.stderr,
        )
    return 0
