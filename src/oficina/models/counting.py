"""Exact parameter counts of an architecture from its config alone, and the shape behind them.

The model is built on PyTorch's ``meta`` device (shapes, no storage), so a 405B config is counted
in a second with no memory, and the count is by construction the sum of the tensor sizes the real
checkpoint holds (a tied output head is the embedding matrix and is counted once).

Below ``oficina.models.sources`` (``oficina models info`` counts with it) and
``oficina.models.sizing`` (``oficina size`` turns a count into bytes, FLOPs and dollars).

    from oficina.models.counting import count_from_path
    count_from_path("path/to/hf_dir")["total"]
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from oficina.errors import NotFound, UserError

PARTS = ("embeddings", "attention", "mlp", "norms", "head", "other")


@dataclass
class Shape:
    """What memory and activation arithmetic needs from an architecture."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool

    @classmethod
    def from_config(cls, config: Any) -> Shape:
        hidden = int(config.hidden_size)
        heads = int(getattr(config, "num_attention_heads", 0) or 1)
        kv = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or hidden // heads
        inter = (
            getattr(config, "intermediate_size", None)
            or getattr(config, "n_inner", None)
            or 4 * hidden
        )
        return cls(
            hidden=hidden,
            layers=int(config.num_hidden_layers),
            heads=heads,
            kv_heads=int(kv),
            head_dim=int(head_dim),
            intermediate=int(inter),
            vocab=int(config.vocab_size),
            tied=bool(getattr(config, "tie_word_embeddings", False)),
        )


@dataclass
class Analysis:
    """An exact count with its breakdown, the shape, and the LoRA-targetable projections."""

    counts: dict[str, int]
    shape: Shape
    lora_in_out: int  # sum of (in + out) features over attention and MLP projections


def _finish_counts(parts: dict[str, int]) -> dict[str, int]:
    total = sum(parts.values())
    out = {"total": total, **parts}
    # As Kaplan et al. count N: everything except the vocabulary matrices (input and output).
    out["non_embedding"] = total - parts["embeddings"] - parts["head"]
    return out


def llama_count(shape: Shape) -> Analysis:
    """The Llama architecture counted by hand (no biases; RMSNorm weights only).

    Used to solve for a shape quickly (``--params``); tests check it equals the meta-device count.
    """
    h, q, kv = shape.hidden, shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    i, L, V = shape.intermediate, shape.layers, shape.vocab
    parts = {
        "embeddings": V * h,
        "attention": L * (h * q + 2 * h * kv + q * h),
        "mlp": L * 3 * h * i,
        "norms": (2 * L + 1) * h,
        "head": 0 if shape.tied else V * h,
        "other": 0,
    }
    lora = L * ((h + q) + 2 * (h + kv) + (q + h) + 2 * (h + i) + (i + h))
    return Analysis(_finish_counts(parts), shape, lora)


def _part_of(name: str, module: Any) -> str:
    """Which part of the breakdown a module's own parameters belong to, from its class and path."""
    import torch.nn as nn

    cls = type(module).__name__.lower()
    if isinstance(module, nn.Embedding) or "embedding" in cls:
        return "embeddings"
    if "norm" in cls:
        return "norms"
    pieces = name.lower().split(".")
    if any("attn" in p or "attention" in p for p in pieces):
        return "attention"
    if any(
        p in ("output", "intermediate", "experts", "fc1", "fc2")
        or any(k in p for k in ("mlp", "feed_forward", "ffn"))
        for p in pieces
    ):
        return "mlp"
    return "other"


def _build_on_meta(config: Any):
    """The model class the checkpoint names (else a causal LM), built with no storage."""
    import torch
    import transformers
    from transformers import AutoModel, AutoModelForCausalLM

    config = copy.deepcopy(config)
    if getattr(config, "quantization_config", None) is not None:
        delattr(config, "quantization_config")  # count the logical (de-quantized) weights
    classes = [
        getattr(transformers, a, None) for a in (getattr(config, "architectures", None) or [])
    ]
    cls = next((c for c in classes if c is not None and hasattr(c, "_from_config")), None)
    with torch.device("meta"):
        if cls is not None:
            return cls._from_config(config)
        try:
            return AutoModelForCausalLM.from_config(config)
        except ValueError:
            return AutoModel.from_config(config)


def analyze_config(config: Any) -> Analysis:
    """Exact count of a ``transformers`` config (or a config dict) without allocating weights."""
    import torch.nn as nn

    if isinstance(config, dict):
        config = _config_from_dict(config)
    try:
        model = _build_on_meta(config)
    except Exception as e:  # an architecture transformers does not know, a broken config...
        raise UserError(
            f"cannot build a '{getattr(config, 'model_type', '?')}' model from this config: "
            f"{_short(e)}"
        ) from None
    parts = dict.fromkeys(PARTS, 0)
    seen: set[int] = set()
    lora = 0

    def take(module, part: str) -> None:
        for p in module.parameters(recurse=False):
            if id(p) not in seen:  # a tied head is the embedding Parameter: count it once
                seen.add(id(p))
                parts[part] += p.numel()

    emb_in = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    emb_out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if emb_in is not None:
        take(emb_in, "embeddings")
    if emb_out is not None:
        take(emb_out, "head")
    for name, module in model.named_modules():
        part = _part_of(name, module)
        take(module, part)
        if isinstance(module, nn.Linear) and module is not emb_out and part in ("attention", "mlp"):
            lora += module.in_features + module.out_features
    return Analysis(_finish_counts(parts), Shape.from_config(model.config), lora)


def _short(e: Exception) -> str:
    """An exception as one short line (transformers' messages can list every model type)."""
    text = " ".join(str(e).split()) or type(e).__name__
    if text.startswith("Unrecognized model") or "does not recognize this architecture" in text:
        return "transformers does not know this model_type (custom code is never run here)"
    return text if len(text) <= 200 else text[:197] + "..."


def _config_from_dict(d: dict):
    from transformers import AutoConfig, LlamaConfig

    d = dict(d)
    model_type = d.pop("model_type", None)
    try:
        return AutoConfig.for_model(model_type, **d) if model_type else LlamaConfig(**d)
    except (ValueError, TypeError) as e:
        raise UserError(f"cannot read this model config: {_short(e)}") from None


def read_config(path: str | Path):
    """A config from an HF directory or a config.json path (weights are never read)."""
    from transformers import AutoConfig

    p = Path(path).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise UserError(f"{p} is a folder without config.json: not a Hugging Face model")
        p = p / "config.json"
    if not p.is_file():
        raise NotFound(f"model config not found: {p}")
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{p} is not valid JSON ({e})") from None
    if not isinstance(d, dict) or "model_type" not in d:
        raise UserError(f"{p} is not a Hugging Face model config (no 'model_type')")
    try:
        return AutoConfig.from_pretrained(p.parent, trust_remote_code=False)
    except Exception as e:
        raise UserError(f"cannot read {p}: {_short(e)}") from None


def count_from_config(config: Any) -> dict[str, int]:
    """{total, embeddings, attention, mlp, norms, head, other, non_embedding} for a config."""
    return analyze_config(config).counts


def count_from_path(hf_dir: str | Path) -> dict[str, int]:
    """The exact breakdown of an HF directory (or config.json) from its config alone."""
    return analyze_config(read_config(hf_dir)).counts
