"""What N parameters mean in bytes, FLOPs, hours and dollars: ``oficina size``.

The exact parameter count comes from the model's config alone: the model is built on PyTorch's
``meta`` device (shapes, no storage), so a 405B config is counted in a second with no memory,
and the count is by construction the sum of the tensor sizes the real checkpoint holds (a tied
output head is the embedding matrix and is counted once). From the count and the shape follow

* memory to serve: weights at fp32 / bf16 / int8 / int4, plus the KV cache
  ``2 x layers x kv_heads x head_dim x bytes x (context x batch)``;
* memory to train: full fine-tuning with AdamW in mixed precision (16 bytes per parameter),
  LoRA (frozen bf16 base + a trainable adapter) and QLoRA (4-bit base), plus an activation
  *estimate* for a sequence length and micro-batch;
* training compute ``6 N D`` for D tokens (default: the compute-optimal ~20 tokens per parameter
  of Chinchilla), and its time and cost on each row of a hardware table at a stated utilisation.

    oficina size tiny
    oficina size smollm2-135m-instruct --json
    oficina size path/to/config.json --context 8192 --batch 4
    oficina size --params 70B --family llama

Python: ``hardware_table``, ``training_cost``, ``shape_for_params``; the counts themselves
(``count_from_path``, ``count_from_config``) are ``oficina.models.counting``'s.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import Field, field_validator

from oficina.config import VerbConfig
from oficina.errors import NotFound, UserError
from oficina.models.counting import (
    PARTS,
    Analysis,
    Shape,
    analyze_config,
    llama_count,
    read_config,
)
from oficina.models.presets import PRESETS, is_preset, preset_config
from oficina.models.sources import PACKAGED, looks_like_hub_id, resolve

HARDWARE_FILE = Path(__file__).with_name("hardware.yaml")

# Bytes per weight for serving. int8/int4 count the weights alone: real formats add scales
# (GGUF Q8_0 is 8.5 bits per weight, Q4_K_M ~4.8, Q4_0 4.5).
WEIGHT_BYTES = {"fp32": 4.0, "bf16": 2.0, "int8": 1.0, "int4": 0.5}
KV_BYTES = {"fp32": 4, "bf16": 2, "int8": 1}

# Full fine-tuning with AdamW in mixed precision, per parameter: bf16 weights (2) + bf16
# gradients (2) + fp32 master weights (4) + fp32 first and second moments (4 + 4).
FULL_FT_BYTES = {"bf16 weights": 2, "bf16 grads": 2, "fp32 master": 4, "adam m": 4, "adam v": 4}
FULL_FT_BYTES_PER_PARAM = sum(FULL_FT_BYTES.values())  # 16
# A LoRA adapter trains in fp32: weights + gradients + two AdamW moments.
ADAPTER_BYTES_PER_PARAM = 16
# QLoRA's NF4 base: 4 bits per weight + 0.127 bits of (double-quantized) block constants
# (Dettmers et al. 2023). Embeddings, norms and the output head stay in bf16.
QLORA_BITS = 4.127
CHINCHILLA_TOKENS_PER_PARAM = 20


# Published Llama-architecture shapes: hidden, layers, heads, kv heads, MLP width, vocab, tied.
KNOWN_LLAMA_SHAPES: dict[str, tuple[int, int, int, int, int, int, bool]] = {
    "smollm2-135m": (576, 30, 9, 3, 1536, 49152, True),
    "smollm2-360m": (960, 32, 15, 5, 2560, 49152, True),
    "llama-3.2-1b": (2048, 16, 32, 8, 8192, 128256, True),
    "smollm2-1.7b": (2048, 24, 32, 32, 8192, 49152, True),
    "llama-3.2-3b": (3072, 28, 24, 8, 8192, 128256, True),
    "llama-2-7b": (4096, 32, 32, 32, 11008, 32000, False),
    "llama-3.1-8b": (4096, 32, 32, 8, 14336, 128256, False),
    "llama-2-13b": (5120, 40, 40, 40, 13824, 32000, False),
    "llama-2-70b": (8192, 80, 64, 8, 28672, 32000, False),
    "llama-3.1-70b": (8192, 80, 64, 8, 28672, 128256, False),
    "llama-3.1-405b": (16384, 126, 128, 8, 53248, 128256, False),
}
# A known shape is used when it is within this fraction of the asked count; otherwise one is solved.
KNOWN_SHAPE_TOLERANCE = 0.05
MIN_LAYERS = 4  # a solved shape is never shallower than this


# ---------------------------------------------------------------------------- --params N


def parse_count(text: str | int | float, what: str = "count") -> int:
    """'70B' -> 70_000_000_000; also 135M, 1.4T, 2.5k, 1e9, 7b."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        value = float(text)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?\d+)?)\s*([kKmMbBtT]?)\s*", str(text))
        if not m:
            raise ValueError(f"'{text}' is not a {what}; write e.g. 70B, 135M, 1.4T or 1e9")
        scale = {"": 1, "k": 1e3, "m": 1e6, "b": 1e9, "t": 1e12}[m.group(2).lower()]
        value = float(m.group(1)) * scale
    if not value >= 1 or not math.isfinite(value):
        raise ValueError(f"'{text}' is not a positive {what}")
    return int(round(value))


def shape_for_params(n: int, family: str = "llama") -> tuple[Shape, str]:
    """A Llama shape whose exact count is close to ``n``, and a sentence saying which one.

    A published shape within 5% wins. Otherwise search widths (multiples of 128, of 1024 from
    2048) and depths (4 layers or more) for the counts within 2% of ``n`` and keep the one whose
    width/depth ratio is nearest 100 (the Llama-2 family sits at 100-128); the recipe follows
    Llama: head dim 64 (128 from width 2048), 8 KV heads when the head count allows, SwiGLU
    width ~3.5x hidden, vocabulary 32,000 untied from 1B parameters up, else SmolLM2's 49,152
    tied. When nothing is within 2% (tiny counts, where the vocabulary alone is larger), the
    closest count wins and the description says how far off it is.
    """
    if family != "llama":
        raise UserError(f"unknown family '{family}'; known: llama")
    best_known = min(
        KNOWN_LLAMA_SHAPES.items(),
        key=lambda kv: abs(math.log(llama_count(_known(kv[0])).counts["total"] / n)),
    )
    known_total = llama_count(_known(best_known[0])).counts["total"]
    if abs(known_total / n - 1) <= KNOWN_SHAPE_TOLERANCE:
        return _known(best_known[0]), f"the published {best_known[0]} shape"

    big = n >= 1e9
    vocab, tied = (32000, False) if big else (49152, True)
    candidates: list[tuple[float, float, Shape]] = []
    widths = [*range(128, 2048, 128), *range(2048, 32768 + 1, 1024)]
    for hidden in widths:
        head_dim = 128 if hidden >= 2048 else 64
        heads = hidden // head_dim
        kv = 8 if heads % 8 == 0 and heads > 8 else heads
        mult = 256 if hidden >= 1024 else 64
        inter = int(round(3.5 * hidden / mult)) * mult
        one = llama_count(Shape(hidden, 1, heads, kv, head_dim, inter, vocab, tied)).counts
        fixed = one["embeddings"] + one["head"] + hidden
        per_layer = one["total"] - fixed
        guess = max(MIN_LAYERS, round((n - fixed) / per_layer))
        for L in {guess - 1, guess, guess + 1} - {MIN_LAYERS - 1}:
            shape = Shape(hidden, L, heads, kv, head_dim, inter, vocab, tied)
            err = abs(math.log(llama_count(shape).counts["total"] / n))
            candidates.append((err, abs(math.log(hidden / L / 100)), shape))
    close = [c for c in candidates if c[0] <= 0.02]
    err, _, s = min(close, key=lambda c: c[1]) if close else min(candidates, key=lambda c: c[0])
    return s, (
        f"a Llama shape solved for the count (hidden {s.hidden}, {s.layers} layers, "
        f"{s.heads} heads / {s.kv_heads} KV, MLP {s.intermediate}, vocab {s.vocab:,}"
        f"{' tied' if s.tied else ''}; no published shape within {KNOWN_SHAPE_TOLERANCE:.0%}"
        + (f"; {math.exp(err) - 1:.0%} off the asked count" if err > 0.02 else "")
        + ")"
    )


def _known(name: str) -> Shape:
    h, L, a, kv, i, V, tied = KNOWN_LLAMA_SHAPES[name]
    return Shape(h, L, a, kv, h // a, i, V, tied)


def llama_config(shape: Shape):
    """A ``transformers.LlamaConfig`` for a shape (to count it on the meta device or build it)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        hidden_size=shape.hidden,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        head_dim=shape.head_dim,
        intermediate_size=shape.intermediate,
        vocab_size=shape.vocab,
        tie_word_embeddings=shape.tied,
    )


# ---------------------------------------------------------------------------- hardware and cost


def hardware_table(path: str | Path | None = None) -> dict[str, dict]:
    """The built-in hardware rows, with a user YAML file's rows replacing or adding to them.

    Each row: ``{"description", "peak_flops": {"fp32", "bf16"} (FLOP/s), "memory_gb",
    "usd_per_hour"}``. The YAML spells peaks in TFLOP/s (``peak_tflops``) or FLOP/s
    (``peak_flops``).
    """
    rows = _read_hardware(HARDWARE_FILE)
    if path is not None:
        rows.update(_read_hardware(Path(path)))
    return rows


def _read_hardware(path: Path) -> dict[str, dict]:
    if not path.is_file():
        raise NotFound(f"hardware file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        where = f" (line {line + 1})" if line is not None else ""
        raise UserError(f"hardware file {path} is not valid YAML{where}") from None
    if not isinstance(data, dict):
        raise UserError(f"hardware file {path} must map row names to rows")
    rows = {}
    for name, row in data.items():
        try:
            if "peak_tflops" in row:
                peak = {k: float(v) * 1e12 for k, v in row["peak_tflops"].items()}
            else:
                peak = {k: float(v) for k, v in row["peak_flops"].items()}
            if not {"fp32", "bf16"} <= peak.keys() or min(peak.values()) <= 0:
                raise ValueError
            rows[str(name)] = {
                "description": str(row.get("description", "")),
                "peak_flops": peak,
                "memory_gb": float(row["memory_gb"]),
                "usd_per_hour": float(row["usd_per_hour"]),
            }
            if rows[str(name)]["memory_gb"] <= 0 or rows[str(name)]["usd_per_hour"] < 0:
                raise ValueError
        except (KeyError, TypeError, ValueError, AttributeError):
            raise UserError(
                f"hardware row '{name}' in {path} needs peak_tflops {{fp32, bf16}} (> 0), "
                "memory_gb (> 0) and usd_per_hour (>= 0)"
            ) from None
    return rows


def training_cost(
    flops: float,
    hardware: str | dict = "this-cpu",
    utilization: float = 0.35,
    precision: str = "bf16",
    table: dict[str, dict] | None = None,
) -> dict[str, float]:
    """Seconds and dollars to do ``flops`` on one device at a model-FLOPs utilisation."""
    if isinstance(hardware, str):
        rows = table if table is not None else hardware_table()
        if hardware not in rows:
            raise UserError(f"unknown hardware '{hardware}'; rows: {', '.join(rows)}")
        row = rows[hardware]
    else:
        row = hardware
    if precision not in row["peak_flops"]:
        raise UserError(f"unknown precision '{precision}'; known: {', '.join(row['peak_flops'])}")
    if not 0 < utilization <= 1:
        raise UserError(f"utilization must be in (0, 1], got {utilization}")
    seconds = flops / (row["peak_flops"][precision] * utilization)
    return {"seconds": seconds, "usd": seconds / 3600 * row["usd_per_hour"]}


# ---------------------------------------------------------------------------- memory


def kv_cache_bytes(shape: Shape, context: int, batch: int = 1, kv_dtype: str = "bf16") -> int:
    """Keys and values of every layer for ``context x batch`` tokens."""
    return 2 * shape.layers * shape.kv_heads * shape.head_dim * KV_BYTES[kv_dtype] * context * batch


def activation_bytes(shape: Shape, seq_len: int, micro_batch: int) -> dict[str, int]:
    """An ESTIMATE of the activations a bf16 training step keeps for the backward pass.

    Per layer and token, a Llama block with memory-efficient (SDPA/flash) attention keeps the
    two norm inputs and outputs (4h), rotated queries and the attention output (2 x q_dim),
    keys and values (2 x kv_dim) and four SwiGLU tensors (4 x intermediate), in bf16; the
    logits are kept in bf16 and once more in fp32 for the loss (6 bytes x vocab). With
    activation checkpointing only each layer's input (2h bytes) is kept, plus one layer being
    recomputed. Framework buffers and fragmentation are not counted.
    """
    tokens = seq_len * micro_batch
    q, kv = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    per_layer = 2 * tokens * (4 * shape.hidden + 2 * q + 2 * kv + 4 * shape.intermediate)
    logits = 6 * tokens * shape.vocab
    return {
        "full": shape.layers * per_layer + logits,
        "checkpointed": shape.layers * 2 * tokens * shape.hidden + per_layer + logits,
    }


def serve_memory(a: Analysis, context: int, batch: int, kv_dtype: str) -> dict:
    kv = kv_cache_bytes(a.shape, context, batch, kv_dtype)
    out = {}
    for prec, b in WEIGHT_BYTES.items():
        w = math.ceil(a.counts["total"] * b)
        out[prec] = {"weights_bytes": w, "kv_cache_bytes": kv, "total_bytes": w + kv}
    return out


def train_memory(a: Analysis, activations: int, lora_rank: int) -> dict:
    n = a.counts["total"]
    adapter = lora_rank * a.lora_in_out
    adapter_state = ADAPTER_BYTES_PER_PARAM * adapter
    quantized = a.counts["attention"] + a.counts["mlp"]
    qbase = math.ceil(quantized * QLORA_BITS / 8) + 2 * (n - quantized)
    full = FULL_FT_BYTES_PER_PARAM * n
    return {
        "full": {
            "trainable_params": n,
            "bytes_per_param": FULL_FT_BYTES_PER_PARAM,
            "states_bytes": full,
            "activations_bytes": activations,
            "total_bytes": full + activations,
        },
        "lora": {
            "rank": lora_rank,
            "trainable_params": adapter,
            "base_bytes": 2 * n,
            "adapter_state_bytes": adapter_state,
            "activations_bytes": activations,
            "total_bytes": 2 * n + adapter_state + activations,
        },
        "qlora": {
            "rank": lora_rank,
            "trainable_params": adapter,
            "base_bytes": qbase,
            "adapter_state_bytes": adapter_state,
            "activations_bytes": activations,
            "total_bytes": qbase + adapter_state + activations,
        },
    }


# ---------------------------------------------------------------------------- the verb


class SizeConfig(VerbConfig):
    """Parameters, memory to serve and train, FLOPs, time and cost of a model — from its config.

    SPEC is a preset (tiny|mini|small), a packaged name (smollm2-135m-instruct), an HF
    directory or config.json path, or a hub id (its config.json only); or give no SPEC and
    --params 70B --family llama to size a Llama-shaped model of about that many parameters,
    or --hf-config (usually in a YAML file: see examples/size.yaml) for a config written inline.
    """

    positionals: ClassVar[tuple[str, ...]] = ("spec",)
    spec: str | None = Field(
        None, description="preset, packaged name, HF dir, config.json path or hub id"
    )
    params: str | None = Field(
        None, description="size a model of about this many parameters instead (70B, 135M, 1e9)"
    )
    family: Literal["llama"] = Field("llama", description="architecture family for --params")
    hf_config: dict[str, Any] | None = Field(
        None,
        description="instead of SPEC: an HF model config written inline (the keys of a "
        "config.json; model_type defaults to llama), usually in a YAML file",
    )
    vocab_size: int = Field(
        49152, gt=0, description="vocabulary of a preset (SmolLM2's by default)"
    )
    context: int = Field(4096, gt=0, description="tokens per sequence held in the KV cache")
    batch: int = Field(1, gt=0, description="sequences served at once (KV cache)")
    kv_dtype: Literal["fp32", "bf16", "int8"] = Field("bf16", description="KV cache precision")
    seq_len: int = Field(2048, gt=0, description="training sequence length (activations)")
    micro_batch: int = Field(1, gt=0, description="training sequences per device step")
    checkpointing: bool = Field(
        True,
        description="assume activation checkpointing (as QLoRA and large fine-tunes do) for what fits",
    )
    lora_rank: int = Field(16, gt=0, description="LoRA rank r on the attention and MLP projections")
    tokens: str | None = Field(
        None, description="training tokens D (1.4T, 2e9); default: 20 per parameter (Chinchilla)"
    )
    utilization: float = Field(
        0.35, gt=0, le=1, description="model FLOPs utilisation (MFU) assumed for time and cost"
    )
    precision: Literal["fp32", "bf16"] = Field(
        "bf16", description="training precision: which peak of each hardware row to use"
    )
    hardware_file: str | None = Field(
        None, description="YAML of hardware rows that replace or extend the built-in table"
    )
    hardware: list[str] = Field(
        default_factory=list, description="only these hardware rows (empty: every row)"
    )
    compare_on: str = Field(
        "a100-80gb", description="hardware row the plain-language summary is phrased in"
    )
    json_: bool = Field(False, alias="json", description="print JSON instead of tables")

    @field_validator("params", "tokens")
    @classmethod
    def _count(cls, v: str | None) -> str | None:
        if v is not None:
            parse_count(v)  # ValueError -> one-line config error naming the flag
        return v


def _analysis_for(cfg: SizeConfig) -> tuple[Analysis, str]:
    """The model to size and a phrase saying where its shape came from."""
    given = [k for k in ("spec", "params", "hf_config") if getattr(cfg, k)]
    if len(given) > 1:
        raise UserError(
            f"give one of a model SPEC, --params or --hf-config, not {' and '.join(given)}"
        )
    if cfg.hf_config:
        return analyze_config(cfg.hf_config), "an inline config (hf_config)"
    if cfg.params:
        n = parse_count(cfg.params)
        shape, how = shape_for_params(n, cfg.family)
        a = analyze_config(llama_config(shape))
        return a, f"--params {cfg.params} ({n:,}): {how}"
    if not cfg.spec:
        raise UserError(
            "give a model SPEC (preset, packaged name, HF dir, config.json), --params or --hf-config"
        )
    spec = cfg.spec
    if is_preset(spec):
        name = spec.removeprefix("preset:")
        a = analyze_config(preset_config(name, vocab_size=cfg.vocab_size))
        return a, f"preset {name} (vocab {cfg.vocab_size:,})"
    p = Path(spec).expanduser()
    if p.is_dir() or (p.is_file() and p.suffix == ".json"):
        return analyze_config(read_config(p)), str(p.resolve())
    if spec in PACKAGED or (p.is_file() and p.suffix == ".gguf"):
        path = resolve(spec)  # a GGUF is converted once into the cache (then config only)
        return analyze_config(read_config(path)), f"{spec} ({path})"
    if p.suffix in (".json", ".gguf") or spec.startswith((".", "/", "~")):
        raise NotFound(f"model path not found: {spec}")
    if looks_like_hub_id(spec):
        return analyze_config(read_config(_hub_config(spec))), f"hub {spec}"
    raise UserError(
        f"unknown model '{spec}': not a preset ({', '.join(PRESETS)}), packaged name "
        f"({', '.join(PACKAGED)}), folder, config.json or hub id; or use --params 70B --family llama"
    )


def _hub_config(repo: str) -> Path:
    """Only config.json of a hub model: sizing never needs the weights."""
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo, "config.json"))
    except Exception as e:
        raise UserError(
            f"cannot fetch config.json of '{repo}' from the Hugging Face hub "
            f"({type(e).__name__}; offline?); pass a local config.json instead"
        ) from None


def report(cfg: SizeConfig, a: Analysis, source: str, table: dict[str, dict]) -> dict:
    """Everything ``oficina size`` prints, as plain data (integers for counts and bytes)."""
    n = a.counts["total"]
    acts = activation_bytes(a.shape, cfg.seq_len, cfg.micro_batch)
    act_used = acts["checkpointed" if cfg.checkpointing else "full"]
    serve = serve_memory(a, cfg.context, cfg.batch, cfg.kv_dtype)
    train = train_memory(a, act_used, cfg.lora_rank)
    tokens = parse_count(cfg.tokens) if cfg.tokens else CHINCHILLA_TOKENS_PER_PARAM * n
    flops = 6 * n * tokens
    rows = []
    for name, row in table.items():
        mem = row["memory_gb"] * 1e9
        cost = training_cost(flops, row, cfg.utilization, cfg.precision)
        room = mem - act_used
        rows.append(
            {
                "name": name,
                **row,
                "seconds": cost["seconds"],
                "usd": cost["usd"],
                "fits": {
                    "serve_bf16": serve["bf16"]["total_bytes"] <= mem,
                    "serve_int4": serve["int4"]["total_bytes"] <= mem,
                    "train_full": train["full"]["total_bytes"] <= mem,
                    "train_lora": train["lora"]["total_bytes"] <= mem,
                    "train_qlora": train["qlora"]["total_bytes"] <= mem,
                },
                "devices_to_serve_bf16": math.ceil(serve["bf16"]["total_bytes"] / mem),
                # Full fine-tuning sharded over k devices (FSDP/ZeRO-3): 16N/k + activations.
                "devices_to_train_full": math.ceil(train["full"]["states_bytes"] / room)
                if room > 0
                else None,
            }
        )
    out = {
        "spec": cfg.spec,
        "source": source,
        "parameters": n,
        "breakdown": a.counts,
        "shape": asdict(a.shape),
        "serve": {
            "context": cfg.context,
            "batch": cfg.batch,
            "kv_dtype": cfg.kv_dtype,
            "kv_cache_bytes": kv_cache_bytes(a.shape, cfg.context, cfg.batch, cfg.kv_dtype),
            "precisions": serve,
        },
        "train": {
            "seq_len": cfg.seq_len,
            "micro_batch": cfg.micro_batch,
            "checkpointing": cfg.checkpointing,
            "activations_bytes": acts["full"],
            "activations_checkpointed_bytes": acts["checkpointed"],
            **train,
        },
        "compute": {
            "tokens": tokens,
            "tokens_rule": "given" if cfg.tokens else "compute-optimal: 20 tokens per parameter",
            "flops": float(flops),
            "utilization": cfg.utilization,
            "precision": cfg.precision,
        },
        "hardware": rows,
        "assumptions": {
            "full_ft_bytes_per_param": FULL_FT_BYTES,
            "adapter_bytes_per_param": ADAPTER_BYTES_PER_PARAM,
            "qlora_bits_per_weight": QLORA_BITS,
            "weight_bytes": WEIGHT_BYTES,
            "gb": "10^9 bytes",
            "activations": "estimate: bf16, memory-efficient attention, fp32 logits for the loss",
            "flops": "6 x parameters x tokens (forward 2N + backward 4N per token)",
            "prices": "per device-hour, from the hardware table (assumptions; edit them)",
        },
    }
    out["summary"] = summary_line(out, cfg.compare_on)
    return out


# ---------------------------------------------------------------------------- words


def human_count(n: float) -> str:
    for unit, v in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= v:
            return f"{n / v:.3g}{unit}"
    return f"{n:.0f}"


def human_bytes(b: float) -> str:
    for unit, v in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if b >= v:
            return f"{b / v:.3g} {unit}"
    return f"{b:.0f} B"


def human_time(s: float) -> str:
    for unit, v in (("years", 365.25 * 86400), ("days", 86400), ("h", 3600), ("min", 60)):
        if s >= v:
            return f"{s / v:,.3g} {unit}" if s / v < 1000 else f"{s / v:,.0f} {unit}"
    return f"{s:.3g} s"


def human_usd(x: float) -> str:
    if x >= 1e6:
        return f"${x / 1e6:.3g}M"
    return f"${x:,.0f}" if x >= 100 else f"${x:,.2f}"


def _devices(k: int, name: str) -> str:
    return f"one {name}" if k == 1 else f"{k}×{name}"


def summary_line(r: dict, compare_on: str) -> str:
    """One plain-language sentence: what the count means on a reference device."""
    rows = {row["name"]: row for row in r["hardware"]}
    ref = rows[compare_on]
    mem_gb = f"{ref['memory_gb']:g} GB"
    serve, train, comp = r["serve"], r["train"], r["compute"]
    w = serve["precisions"]["bf16"]["weights_bytes"]
    fits = w <= ref["memory_gb"] * 1e9
    parts = [
        f"{human_count(r['parameters'])} parameters in bf16 is {human_bytes(w)} of weights: "
        + (
            f"it fits on one {mem_gb} {compare_on}"
            if fits
            else f"it does not fit on one {mem_gb} device"
        )
    ]
    parts.append(
        f"serving {serve['batch']}×{serve['context']:,} tokens adds {human_bytes(serve['kv_cache_bytes'])} "
        f"of KV cache, so it needs {_devices(ref['devices_to_serve_bf16'], compare_on)} (int4: "
        f"{human_bytes(serve['precisions']['int4']['total_bytes'])})"
    )
    full = train["full"]["total_bytes"]
    k = ref["devices_to_train_full"]
    parts.append(
        f"full fine-tuning needs ~{human_bytes(full)} ({FULL_FT_BYTES_PER_PARAM} B/param + activations"
        + (
            (f", {k}×{compare_on} with sharded states)" if k > 1 else f", fits one {compare_on})")
            if k
            else ", more than one device's memory in activations alone)"
        )
        + f", LoRA r={train['lora']['rank']} {human_bytes(train['lora']['total_bytes'])}, "
        f"QLoRA {human_bytes(train['qlora']['total_bytes'])}"
    )
    how = "compute-optimally" if comp["tokens_rule"] != "given" else ""
    sentence = (
        f"training it {how + ' ' if how else ''}on {human_count(comp['tokens'])} tokens "
        f"({comp['flops']:.2g} FLOPs) takes ~{human_time(ref['seconds'])} on one {compare_on}"
    )
    if ref["seconds"] > 365.25 * 86400:
        sentence += f" ({human_time(ref['seconds'] / 1000)} on 1,000 of them)"
    sentence += f" at {comp['utilization']:.0%} MFU ({human_usd(ref['usd'])})"
    if "this-cpu" in rows and compare_on != "this-cpu":
        sentence += f", or {human_time(rows['this-cpu']['seconds'])} on this CPU"
    parts.append(sentence)
    return "; ".join(parts) + "."


def render(r: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console()
    if not con.is_terminal:  # a pipe or a file: do not squeeze the tables into 80 columns
        con = Console(width=120)
    s = r["shape"]
    con.print(f"[bold]oficina size[/bold] — {r['source']}")
    con.print(
        f"shape: hidden {s['hidden']}, {s['layers']} layers, {s['heads']} heads / {s['kv_heads']} KV "
        f"(head dim {s['head_dim']}), MLP {s['intermediate']}, vocab {s['vocab']:,}"
        f"{', tied head' if s['tied'] else ', untied head'}"
    )
    n = r["parameters"]
    t = Table(title=f"parameters: {n:,}")
    t.add_column("part")
    t.add_column("parameters", justify="right")
    t.add_column("share", justify="right")
    for part in (*PARTS, "non_embedding"):
        v = r["breakdown"][part]
        if part == "other" and not v:
            continue
        t.add_row(part.replace("_", "-"), f"{v:,}", f"{v / n:.1%}")
    con.print(t)

    sv = r["serve"]
    t = Table(
        title=f"memory to serve (KV cache: {sv['batch']}×{sv['context']:,} tokens in {sv['kv_dtype']})"
    )
    for c in ("precision", "weights", "KV cache", "total"):
        t.add_column(c, justify="left" if c == "precision" else "right")
    for prec, m in sv["precisions"].items():
        t.add_row(
            prec,
            human_bytes(m["weights_bytes"]),
            human_bytes(m["kv_cache_bytes"]),
            human_bytes(m["total_bytes"]),
        )
    con.print(t)

    tr = r["train"]
    act = "with activation checkpointing" if tr["checkpointing"] else "no checkpointing"
    t = Table(
        title=f"memory to train (activations estimated for {tr['micro_batch']}×{tr['seq_len']:,} "
        f"tokens, {act})"
    )
    t.add_column("method", no_wrap=True)
    for c in ("trainable", "weights+optimizer", "activations", "total"):
        t.add_column(c, justify="right")
    t.add_row(
        f"full FT, AdamW ({FULL_FT_BYTES_PER_PARAM} B/param)",
        human_count(tr["full"]["trainable_params"]),
        human_bytes(tr["full"]["states_bytes"]),
        human_bytes(tr["full"]["activations_bytes"]),
        human_bytes(tr["full"]["total_bytes"]),
    )
    for key, label in (("lora", "LoRA, bf16 base"), ("qlora", "QLoRA, 4-bit base")):
        m = tr[key]
        t.add_row(
            f"{label}, r={m['rank']}",
            human_count(m["trainable_params"]),
            human_bytes(m["base_bytes"] + m["adapter_state_bytes"]),
            human_bytes(m["activations_bytes"]),
            human_bytes(m["total_bytes"]),
        )
    con.print(t)

    c = r["compute"]
    t = Table(
        title=f"training compute: 6 × {human_count(n)} params × {human_count(c['tokens'])} tokens "
        f"({c['tokens_rule']}) = {c['flops']:.3g} FLOPs at {c['utilization']:.0%} MFU, {c['precision']}"
    )
    t.add_column("hardware", no_wrap=True)
    for col in ("TFLOP/s", "memory", "$/h", "serve", "full FT", "LoRA", "QLoRA", "time", "cost"):
        t.add_column(col, justify="right")

    def fit(ok: bool, devices: int | None = None) -> str:
        if ok:
            return "fits"
        return f"[red]{devices}×[/red]" if devices else "[red]no[/red]"

    for row in r["hardware"]:
        f = row["fits"]
        t.add_row(
            row["name"],
            f"{row['peak_flops'][c['precision']] / 1e12:g}",
            f"{row['memory_gb']:.0f} GB",
            f"{row['usd_per_hour']:g}",
            fit(f["serve_bf16"], row["devices_to_serve_bf16"]),
            fit(f["train_full"], row["devices_to_train_full"]),
            fit(f["train_lora"]),
            fit(f["train_qlora"]),
            human_time(row["seconds"]),
            human_usd(row["usd"]),
        )
    con.print(t)
    con.print(
        "[dim]serve = bf16 weights + KV cache; red N× = does not fit on one device, needs N "
        "(full FT: states sharded FSDP-style); time and cost on ONE device; GB = 10^9 bytes; "
        "peaks and prices from the hardware table (--hardware-file to edit).[/dim]"
    )
    con.print(r["summary"])


def run(cfg: SizeConfig) -> int:
    from oficina.workspace import atomic_write_json, start_run

    table = hardware_table(cfg.hardware_file)
    unknown = [h for h in [*cfg.hardware, cfg.compare_on] if h not in table]
    if unknown:
        raise UserError(f"unknown hardware '{unknown[0]}'; rows: {', '.join(table)}")
    if cfg.hardware:
        table = {h: table[h] for h in dict.fromkeys([*cfg.hardware, cfg.compare_on])}
    a, source = _analysis_for(cfg)
    r = report(cfg, a, source, table)
    with start_run("size", cfg) as run_:
        if cfg.hf_config:
            model_id = json.dumps(cfg.hf_config, sort_keys=True)
        else:
            model_id = cfg.spec or f"params:{cfg.params}:{cfg.family}"
        run_.add_input("model", model_id)
        if cfg.hardware_file:
            run_.add_input("hardware", cfg.hardware_file)
        atomic_write_json(run_.dir / "size.json", r)
        run_.add_output("size", run_.dir / "size.json")
        run_.summary.update(
            parameters=r["parameters"], flops=r["compute"]["flops"], summary=r["summary"]
        )
    if cfg.json_:
        print(json.dumps(r, indent=2))
    else:
        render(r)
    return 0
