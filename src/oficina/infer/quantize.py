"""``oficina quantize``: weight-only int8 for PyTorch CPU inference, or GGUF export for llama.cpp.

    oficina quantize smollm2-135m-instruct --method int8 --out quantized/smollm2-int8
    oficina quantize smollm2-135m-instruct --method gguf --out smollm2-q8_0.gguf

Each result states size on disk, generation tokens/s and perplexity on the demo validation
texts, float next to quantized, measured in the same run. The perplexity is the engine's one
definition (``oficina.infer.scoring``: BOS first, sliding windows of ``--window`` tokens moving
by half a window, exp of total NLL over total tokens of all texts), so it is the number
``oficina eval --perplexity`` prints for the same model and texts.

**int8, and how it is stored.** Weight-only int8 (``oficina.infer.int8``): every ``nn.Linear``
(and a tied input embedding) keeps an int8 weight with a float32 scale per output channel;
activations stay in the engine's dtype. The output directory holds the source's config and
tokenizer files, ``oficina-int8.safetensors`` (int8 weights + scales + the tensors that stay
float; about a quarter of the float32 size) and ``oficina-quantization.json`` (the recipe:
which modules are int8). ``Engine.from_spec`` loads it through the safetensors gate; other
loaders refuse it (there is no ``model.safetensors``) rather than misread int8 as float.

**GGUF** is written by Oficina itself (``oficina.infer.gguf_export``, with the ``gguf``
library): Llama-architecture models with a byte-level BPE tokenizer that llama.cpp has a
pre-tokenizer for; anything else is refused with a one-line reason. Its quality is measured
twice: the file's de-quantized weights run in PyTorch (always), and, when ``llama_cpp``
(llama-cpp-python) is importable, llama.cpp itself on the same windows of the same token ids
(``perplexity_plan``), which also gives
the tokens/s. Without llama-cpp-python the result says so and has no tokens/s.
"""

from __future__ import annotations

import copy
import io
import json
import os
import shutil
import time
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field

from oficina.config import VerbConfig
from oficina.errors import NotFound, UserError
from oficina.infer import gguf_export as gx
from oficina.infer.engine import Engine, SamplingParams
from oficina.infer.fuse import unfuse_projections
from oficina.infer.int8 import RECIPE, quantize_int8, save_int8
from oficina.infer.scoring import perplexity_plan
from oficina.models.safety import PICKLE_SUFFIXES
from oficina.models.sources import resolve
from oficina.workspace import atomic_write_json, start_run


class QuantizeConfig(VerbConfig):
    """Quantize a model (weight-only int8 for PyTorch CPU, or GGUF for llama.cpp) and measure it.

    Perplexity: BOS first, sliding windows of --window tokens moving by half a window, exp(total
    NLL / total tokens) over all texts; the same number oficina eval --perplexity prints.
    """

    positionals = ("model",)
    model: str = Field(description="model spec")
    method: Literal["int8", "gguf"] = Field(
        "int8", description="int8 (PyTorch, weight-only) or gguf (llama.cpp)"
    )
    out: str = Field(description="output directory (int8) or .gguf file (gguf)")
    gguf_type: Literal["q8_0", "f16", "bf16", "f32"] = Field("q8_0", description="GGUF tensor type")
    eval_texts: str = Field(
        "examples/demo/task/validation.jsonl", description="JSONL with 'text' for perplexity"
    )
    max_texts: int = Field(40, ge=1, description="how many texts to score")
    window: int = Field(
        1024,
        ge=8,
        description="perplexity: tokens per sliding window at most (stride half a window, BOS "
        "first, token-weighted over all texts: the same definition as oficina eval)",
    )
    bench_tokens: int = Field(48, ge=1, description="tokens generated for the speed figure")
    json_: bool = Field(False, alias="json", description="print the result as JSON")


# ---------------------------------------------------------------------------- sizes


def state_bytes(model) -> int:
    """Bytes of the model's state serialized (in memory, never written): the RAM it needs."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.tell()


def dir_bytes(path: Path) -> int:
    return (
        path.stat().st_size
        if path.is_file()
        else sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    )


# ---------------------------------------------------------------------------- measurement


BENCH_PROMPT = "The Python language reference describes"


def tokens_per_s(engine, n: int) -> float:
    """Batch-1 generation speed: prefill + exactly ``n`` greedy tokens (EOS ignored)."""
    eos, engine.eos_ids = engine.eos_ids, set()
    try:
        engine.generate([BENCH_PROMPT], SamplingParams(max_new_tokens=4))  # warm-up
        t0 = time.perf_counter()
        c = engine.generate([BENCH_PROMPT], SamplingParams(max_new_tokens=n))[0]
        return c.completion_tokens / (time.perf_counter() - t0)
    finally:
        engine.eos_ids = eos


def _texts(cfg: QuantizeConfig) -> list[str]:
    p = Path(cfg.eval_texts)
    if not p.is_file():
        raise NotFound(f"eval texts not found: {p}")
    rows = [json.loads(x) for x in p.read_text(encoding="utf-8").splitlines() if x.strip()]
    return [r["text"] for r in rows if isinstance(r, dict) and r.get("text")][: cfg.max_texts]


# ---------------------------------------------------------------------------- gguf


def measure_gguf(base, out: Path, texts: list[str], cfg: QuantizeConfig) -> dict:
    """Size, perplexity and tokens/s of an exported GGUF, next to the float ``base`` engine."""
    res: dict = {"size_on_disk_bytes": out.stat().st_size, "gguf_type": cfg.gguf_type}
    _, state = gx.read_gguf_state_dict(out)
    model = copy.deepcopy(base.model)
    unfuse_projections(model)  # the GGUF's tensors carry the config's names (q_proj, not qkv)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    if unexpected or [m for m in missing if not (tied and m == "lm_head.weight")]:
        raise UserError(
            f"GGUF read-back mismatch: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    deq = Engine(model, base.tokenizer, name=f"{base.name} (gguf {cfg.gguf_type})")
    res["perplexity_torch_dequantized"] = deq.perplexity(texts, cfg.window)
    del deq, model, state
    version = gx.llama_cpp_version()
    if version is None:
        res["perplexity"] = res["perplexity_torch_dequantized"]
        res["tokens_per_s"] = None
        res["runtime"] = (
            "llama-cpp-python is not installed: perplexity is the GGUF's de-quantized weights "
            "run in PyTorch; no llama.cpp tokens/s (pip install llama-cpp-python)"
        )
        return res
    threads = torch.get_num_threads()
    # llama.cpp scores the very windows (same token ids, same targets) PyTorch scores.
    plan = perplexity_plan(base, texts, cfg.window)
    jobs = [(w, first) for _, w, first in plan.jobs]
    llm = gx.load_llama(out, n_ctx=max(64, max(len(w) for w, _ in jobs)), logits_all=True)
    res["perplexity"] = gx.llama_perplexity(llm, jobs)
    del llm
    prompt = base.encode(BENCH_PROMPT)
    res["tokens_per_s"] = round(gx.llama_tokens_per_s(out, [prompt], cfg.bench_tokens), 2)
    res["runtime"] = (
        f"llama.cpp (llama-cpp-python {version}), {threads} threads; tokens/s in a child "
        "process without Oficina's OMP_WAIT_POLICY (llama.cpp's default)"
    )
    return res


# ---------------------------------------------------------------------------- verb


def run(cfg: QuantizeConfig) -> int:
    with start_run("quantize", cfg) as rec:
        src = resolve(cfg.model)
        rec.add_input("model", src)
        out = Path(cfg.out)
        info: dict = {}
        if (src / RECIPE).is_file():
            raise UserError(f"{cfg.model} is already quantized ({RECIPE} present)")
        if cfg.method == "gguf":  # export first: an unsupported model fails before any work
            if out.suffix != ".gguf":
                raise UserError(f"--out for gguf must be a .gguf file, got {out}")
            info = gx.export_gguf(src, out, cfg.gguf_type)
        texts = _texts(cfg)
        base = Engine.from_spec(cfg.model)
        res: dict = {"method": cfg.method, "model": cfg.model, "out": str(out.resolve())}
        t0 = time.perf_counter()
        res["float"] = {
            "size_on_disk_bytes": dir_bytes(src),
            "state_bytes": state_bytes(base.model),
            "tokens_per_s": round(tokens_per_s(base, cfg.bench_tokens), 2),
            "perplexity": base.perplexity(texts, cfg.window),
        }
        if cfg.method == "int8":
            tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            # Config, tokenizer and generation files; the float weights are replaced by int8.
            weights = ["*.safetensors", "*.safetensors.index.json"]
            weights += [f"*{suffix}" for suffix in PICKLE_SUFFIXES]
            shutil.copytree(
                src, tmp, ignore=shutil.ignore_patterns(".*", "oficina-source.json", *weights)
            )
            try:
                save_int8(quantize_int8(base.model), tmp, source=str(src))
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            if out.exists():
                shutil.rmtree(out)
            os.replace(tmp, out)
            q = Engine.from_spec(str(out))
            res["quantized"] = {
                "size_on_disk_bytes": dir_bytes(out),
                "state_bytes": state_bytes(q.model),
                "tokens_per_s": round(tokens_per_s(q, cfg.bench_tokens), 2),
                "perplexity": q.perplexity(texts, cfg.window),
            }
        else:
            res["quantized"] = measure_gguf(base, out, texts, cfg)
            res["quantized"]["pre_tokenizer"] = info["pre_tokenizer"]
            res["quantized"]["tensor_types"] = info["tensor_types"]
        f, qz = res["float"], res["quantized"]
        res["ratios"] = {
            "state_size": round(qz["state_bytes"] / f["state_bytes"], 3)
            if qz.get("state_bytes")
            else None,
            "speedup": round(qz["tokens_per_s"] / f["tokens_per_s"], 3)
            if qz.get("tokens_per_s")
            else None,
            "perplexity_change": round(qz["perplexity"] / f["perplexity"] - 1, 4)
            if qz.get("perplexity")
            else None,
        }
        res["eval"] = {"texts": len(texts), "file": cfg.eval_texts, "window": cfg.window}
        res["wall_time_s"] = round(time.perf_counter() - t0, 2)
        rec.add_output("quantized", out)
        rec.summary.update(res)
        atomic_write_json(rec.dir / "quantize.json", res)
        if cfg.json_:
            print(json.dumps(res, indent=2))
        else:
            _table(res)
    return 0


def _table(res: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"{res['model']} -> {res['method']} ({res['out']})")
    f, q, r = res["float"], res["quantized"], res["ratios"]
    label = res["method"] if res["method"] == "int8" else f"gguf {q['gguf_type']}"
    for c in ("", "float32 (PyTorch)", label, "ratio"):
        t.add_column(c)
    if q.get("runtime"):
        t.caption = f"{label}: {q['runtime']}"

    def mb(x):
        return "-" if x is None else f"{x / 1e6:.1f} MB"

    t.add_row(
        "size on disk",
        mb(f["size_on_disk_bytes"]),
        mb(q["size_on_disk_bytes"]),
        f"{q['size_on_disk_bytes'] / f['size_on_disk_bytes']:.2f}",
    )
    if q.get("state_bytes"):
        t.add_row(
            "int8 state (RAM)",
            mb(f["state_bytes"]),
            mb(q.get("state_bytes")),
            str(r["state_size"] or "-"),
        )
    t.add_row(
        "tokens/s (batch 1)",
        f"{f['tokens_per_s']:.1f}",
        str(q.get("tokens_per_s") or "-"),
        str(r["speedup"] or "-"),
    )
    t.add_row(
        f"perplexity ({res['eval']['texts']} texts)",
        f"{f['perplexity']:.3f}",
        f"{q['perplexity']:.3f}" if q.get("perplexity") else "-",
        f"{r['perplexity_change']:+.2%}" if r["perplexity_change"] is not None else "-",
    )
    if "perplexity_torch_dequantized" in q and q.get("tokens_per_s") is not None:
        d = q["perplexity_torch_dequantized"]
        t.add_row(
            "perplexity, GGUF weights in PyTorch",
            f"{f['perplexity']:.3f}",
            f"{d:.3f}",
            f"{d / f['perplexity'] - 1:+.2%}",
        )
    Console(stderr=False).print(t)
