"""GGUF export for llama.cpp: a Llama-architecture HF directory -> one ``.gguf`` file.

Written with the ``gguf`` library (the Python half of llama.cpp), so exporting needs no
llama.cpp build. It mirrors what llama.cpp's own ``convert_hf_to_gguf.py`` writes for
``LlamaForCausalLM`` with a GPT-2-style byte-level BPE tokenizer:

* hyper-parameters under ``llama.*`` (context, widths, heads, RMS epsilon, RoPE base/dims);
* the tokenizer as ``tokenizer.ggml.model = "gpt2"`` with tokens, token types, merges, special
  ids, whether BOS/EOS are added, and the chat template; ``tokenizer.ggml.pre`` names the
  pre-tokenizer (llama.cpp has one regex set per name), found as llama.cpp finds it (a hash of
  a probe text's token ids) or, for a tokenizer trained here, from ``tokenizer.json``;
* tensors renamed with gguf's Llama name map; the Q and K projections permuted from the HF
  rotary layout (rotate halves) to GGML's (rotate adjacent pairs); a tied ``lm_head`` is not
  written (llama.cpp reuses ``token_embd``); 1-D tensors and norms stay float32.

Anything else (other architectures, SentencePiece/Unigram/WordPiece tokenizers, a BPE whose
pre-tokenizer llama.cpp has no regex for, RoPE scaling other than linear) is refused with a
one-line UserError that says what is not supported.

``read_gguf_state_dict`` is the inverse (de-quantize, un-permute, HF names): tests use it to
load an export back into the HF model.
"""

from __future__ import annotations

import json
import os
from hashlib import sha256
from pathlib import Path

import numpy as np

from oficina.errors import UserError

TYPES = ("f32", "f16", "bf16", "q8_0")

# llama.cpp's probe text (convert_hf_to_gguf.py, get_vocab_base_pre): the sha256 of the token ids
# it encodes to identifies a BPE pre-tokenizer. Only byte-level GPT-2-family entries are listed.
CHKTXT = "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ ------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
KNOWN_PRE = {
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",  # gpt2
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",  # SmolLM(2)
}


def _gguf():
    import gguf

    return gguf


def _qtype(name: str):
    g = _gguf()
    return {
        "f32": g.GGMLQuantizationType.F32,
        "f16": g.GGMLQuantizationType.F16,
        "bf16": g.GGMLQuantizationType.BF16,
        "q8_0": g.GGMLQuantizationType.Q8_0,
    }[name]


def _file_type(name: str) -> int:
    g = _gguf()
    return int(
        {
            "f32": g.LlamaFileType.ALL_F32,
            "f16": g.LlamaFileType.MOSTLY_F16,
            "bf16": g.LlamaFileType.MOSTLY_BF16,
            "q8_0": g.LlamaFileType.MOSTLY_Q8_0,
        }[name]
    )


# ---------------------------------------------------------------------------- rotary layout


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF q/k rows (per head: first half, second half) -> GGML (interleaved pairs).

    ``n_head`` is the number of heads *this* projection has (the KV heads for k_proj). Same
    operation as ``LlamaModel.permute`` in llama.cpp's converter.
    """
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """The inverse of ``permute``: GGML q/k rows back to the HF layout."""
    return (
        w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


# ---------------------------------------------------------------------------- checks


def _config(src: Path) -> dict:
    p = src / "config.json"
    if not p.is_file():
        raise UserError(f"{src} has no config.json: not a Hugging Face model directory")
    cfg = json.loads(p.read_text())
    arch = (cfg.get("architectures") or ["?"])[0]
    if arch != "LlamaForCausalLM" or cfg.get("model_type") != "llama":
        raise UserError(
            f"GGUF export supports Llama-architecture models only (LlamaForCausalLM), "
            f"this one is {arch} ({cfg.get('model_type')}); use --method int8"
        )
    return cfg


def _rope(cfg: dict) -> tuple[float, dict | None]:
    rope = dict(cfg.get("rope_parameters") or {})
    if cfg.get("rope_scaling"):
        rope.update(cfg["rope_scaling"])
    theta = float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0)))
    kind = rope.get("rope_type", rope.get("type", "default")) or "default"
    if kind == "default":
        return theta, None
    if kind == "linear" and rope.get("factor") is not None:
        return theta, {"type": "linear", "factor": float(rope["factor"])}
    raise UserError(f"GGUF export does not support RoPE scaling {kind!r} (only none or linear)")


def detect_pre(tokenizer, tokenizer_json: dict) -> str:
    """The llama.cpp pre-tokenizer name for a byte-level BPE tokenizer, or a UserError.

    First as llama.cpp does (hash of the probe text's ids: known tokenizers); then, for a BPE
    trained here, from the pre-tokenizer's structure: a bare GPT-2 ``ByteLevel`` is ``gpt-2``,
    individual ``Digits`` then ``ByteLevel`` is ``smollm``.
    """
    known = KNOWN_PRE.get(sha256(str(tokenizer.encode(CHKTXT)).encode()).hexdigest())
    if known:
        return known
    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]

    def byte_level(s: dict) -> bool:
        return (
            s.get("type") == "ByteLevel"
            and s.get("use_regex", True)
            and not s.get("add_prefix_space", False)
        )

    if len(steps) == 1 and byte_level(steps[0]):
        return "gpt-2"
    if (
        len(steps) == 2
        and steps[0].get("type") == "Digits"
        and steps[0].get("individual_digits")
        and byte_level(steps[1])
    ):
        return "smollm"
    raise UserError(
        "llama.cpp has no pre-tokenizer matching this tokenizer "
        f"({json.dumps(pre)[:120]}), so it cannot be exported to GGUF faithfully; use --method int8"
    )


def _tokenizer_json(src: Path) -> dict:
    p = src / "tokenizer.json"
    if not p.is_file():
        raise UserError(
            f"{src} has no tokenizer.json: GGUF export needs a byte-level BPE tokenizer "
            "(SentencePiece .model tokenizers are not supported); use --method int8"
        )
    tj = json.loads(p.read_text(encoding="utf-8"))
    model = tj.get("model") or {}
    decoder = tj.get("decoder") or {}
    if (
        model.get("type") != "BPE"
        or model.get("byte_fallback")
        or decoder.get("type") != "ByteLevel"
    ):
        raise UserError(
            f"GGUF export supports byte-level (GPT-2 style) BPE tokenizers only; this one is "
            f"{model.get('type')} with a {decoder.get('type')} decoder; use --method int8"
        )
    if tj.get("normalizer"):
        raise UserError(
            f"GGUF export does not support tokenizer normalizers ({tj['normalizer'].get('type')}); "
            "use --method int8"
        )
    return tj


# ---------------------------------------------------------------------------- vocabulary


def _vocab(tokenizer, vocab_size: int) -> tuple[list[str], list[int]]:
    """Tokens and token types, id by id (as llama.cpp's get_vocab_base)."""
    g = _gguf()
    vocab = tokenizer.get_vocab()
    if max(vocab.values()) >= vocab_size:
        raise UserError(
            f"tokenizer has ids up to {max(vocab.values())} but the model's vocab_size is {vocab_size}"
        )
    reverse = {i: t for t, i in vocab.items()}
    added = tokenizer.added_tokens_decoder
    tokens: list[str] = []
    types: list[int] = []
    for i in range(vocab_size):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(int(g.TokenType.UNUSED))
            continue
        tok = reverse[i]
        if i in added:
            if not added[i].normalized:
                tok = tokenizer.decode(tokenizer.encode(tok, add_special_tokens=False))
            special = added[i].special or (tok.startswith("<|") and tok.endswith("|>"))
            types.append(int(g.TokenType.CONTROL if special else g.TokenType.USER_DEFINED))
        else:
            types.append(int(g.TokenType.NORMAL))
        tokens.append(tok)
    return tokens, types


# ---------------------------------------------------------------------------- tensors


def _hf_tensors(src: Path):
    """(name, float32 numpy array) for every tensor in the model's safetensors weight files."""
    from safetensors import safe_open

    from oficina.models.safety import check_model_dir

    # The files the model is made of (a stray x.safetensors beside them is not part of it).
    files = check_model_dir(src)
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            for name in st.keys():
                yield name, st.get_tensor(name).float().numpy()


def export_gguf(src: str | Path, out: str | Path, outtype: str = "q8_0") -> dict:
    """Write ``src`` (HF Llama directory) as a GGUF file at ``out`` (atomically).

    Returns a summary: pre-tokenizer, tensor count, tensor types, bytes written.
    """
    from transformers import AutoTokenizer

    g = _gguf()
    src, out = Path(src), Path(out)
    if outtype not in TYPES:
        raise UserError(f"unknown GGUF type {outtype!r}; choose one of {', '.join(TYPES)}")
    cfg = _config(src)
    tj = _tokenizer_json(src)
    theta, scaling = _rope(cfg)
    tok = AutoTokenizer.from_pretrained(str(src))
    pre = detect_pre(tok, tj)

    n_head, n_layer = int(cfg["num_attention_heads"]), int(cfg["num_hidden_layers"])
    n_kv = int(cfg.get("num_key_value_heads") or n_head)
    hidden, vocab_size = int(cfg["hidden_size"]), int(cfg["vocab_size"])
    head_dim = int(cfg.get("head_dim") or hidden // n_head)
    tied = bool(cfg.get("tie_word_embeddings", False))
    qtype = _qtype(outtype)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
    w = g.GGUFWriter(str(tmp), arch="llama")
    try:
        w.add_type(g.GGUFType.MODEL)
        w.add_name(str(cfg.get("_name_or_path") or cfg.get("_model_name_or_path") or src.name))
        w.add_block_count(n_layer)
        w.add_context_length(int(cfg.get("max_position_embeddings", 2048)))
        w.add_embedding_length(hidden)
        w.add_feed_forward_length(int(cfg["intermediate_size"]))
        w.add_head_count(n_head)
        w.add_head_count_kv(n_kv)
        w.add_rope_freq_base(theta)
        if scaling:
            w.add_rope_scaling_type(g.RopeScalingType.LINEAR)
            w.add_rope_scaling_factor(scaling["factor"])
        w.add_layer_norm_rms_eps(float(cfg.get("rms_norm_eps", 1e-6)))
        if cfg.get("head_dim") is not None:
            w.add_key_length(head_dim)
            w.add_value_length(head_dim)
        w.add_file_type(_file_type(outtype))
        w.add_vocab_size(vocab_size)
        w.add_rope_dimension_count(head_dim)

        tokens, types = _vocab(tok, vocab_size)
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(pre)
        w.add_token_list(tokens)
        w.add_token_types(types)
        special = g.SpecialVocab(src, load_merges=True, n_vocab=vocab_size)
        if not special.merges:
            raise UserError(f"{src}/tokenizer.json has no BPE merges")
        # What the HF tokenizer really does when it encodes text (Engine.encode adds specials).
        probe = tok("a")["input_ids"]
        special.add_special_token["bos"] = bool(
            tok.bos_token_id is not None and probe and probe[0] == tok.bos_token_id
        )
        special.add_special_token["eos"] = bool(
            tok.eos_token_id is not None and probe and probe[-1] == tok.eos_token_id
        )
        if special.chat_template is None and isinstance(tok.chat_template, str):
            special.chat_template = tok.chat_template
        special.add_to_gguf(w, quiet=True)
        w.add_quantization_version(g.GGML_QUANT_VERSION)

        names = g.get_tensor_name_map(g.MODEL_ARCH.LLAMA, n_layer)
        types_used: dict[str, int] = {}
        seen: set[str] = set()
        for name, data in _hf_tensors(src):
            if name.endswith("rotary_emb.inv_freq"):
                continue
            if name == "lm_head.weight" and tied:
                continue
            new = names.get_name(name, try_suffixes=(".weight", ".bias"))
            if new is None:
                raise UserError(f"GGUF export: no llama.cpp name for tensor {name!r}")
            if name.endswith(("q_proj.weight", "q_proj.bias")):
                data = permute(data, n_head)
            elif name.endswith(("k_proj.weight", "k_proj.bias")):
                data = permute(data, n_kv)
            t = qtype
            if data.ndim <= 1 or new.endswith("_norm.weight"):
                t = g.GGMLQuantizationType.F32
            try:
                q = g.quants.quantize(data, t)
            except g.QuantError:  # rows not a multiple of the block size: as llama.cpp does
                t = g.GGMLQuantizationType.F16
                q = g.quants.quantize(data, t)
            w.add_tensor(new, q, raw_dtype=t)
            seen.add(new)
            types_used[t.name] = types_used.get(t.name, 0) + 1
        if "token_embd.weight" not in seen or (not tied and "output.weight" not in seen):
            raise UserError(f"{src}: embedding or output weights missing from the safetensors")
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.replace(tmp, out)
    except BaseException:
        w.close()
        tmp.unlink(missing_ok=True)
        raise
    return {
        "pre_tokenizer": pre,
        "tensors": len(seen),
        "tensor_types": types_used,
        "gguf_type": outtype,
        "bytes": out.stat().st_size,
    }


# ---------------------------------------------------------------------------- reading back


def read_gguf_state_dict(path: str | Path) -> tuple[dict, dict]:
    """A GGUF written by ``export_gguf`` -> (metadata dict, HF-named float32 torch tensors).

    De-quantizes every tensor and undoes the q/k permutation; the inverse of the export for
    the tensors (used by tests and to inspect files).
    """
    import torch

    g = _gguf()
    r = g.GGUFReader(str(path))
    meta: dict = {}
    for k, f in r.fields.items():
        if k.startswith("GGUF."):
            continue
        try:
            meta[k] = f.contents()
        except Exception:  # noqa: BLE001 - exotic field types are not needed here
            continue
    n_layer = int(meta["llama.block_count"])
    n_head = int(meta["llama.attention.head_count"])
    n_kv = int(meta.get("llama.attention.head_count_kv", n_head))
    names = g.get_tensor_name_map(g.MODEL_ARCH.LLAMA, n_layer)
    back = {}
    for hf in ["model.embed_tokens", "model.norm", "lm_head"] + [
        f"model.layers.{i}.{p}"
        for i in range(n_layer)
        for p in (
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
            "mlp.gate_proj",
            "mlp.up_proj",
            "mlp.down_proj",
            "input_layernorm",
            "post_attention_layernorm",
        )
    ]:
        back[names.get_name(hf)] = hf
    state = {}
    for t in r.tensors:
        base, _, suffix = t.name.rpartition(".")
        if base not in back:
            raise ValueError(f"unexpected tensor {t.name} in {path}")
        shape = tuple(int(x) for x in reversed(t.shape))  # GGML lists dims innermost first
        data = g.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(shape)
        hf = back[base]
        if hf.endswith("q_proj"):
            data = unpermute(data, n_head)
        elif hf.endswith("k_proj"):
            data = unpermute(data, n_kv)
        state[f"{hf}.{suffix}"] = torch.from_numpy(np.array(data, dtype=np.float32))
    return meta, state


# ---------------------------------------------------------------------------- llama.cpp runtime


def llama_cpp_version() -> str | None:
    """The installed llama-cpp-python version, or None when ``llama_cpp`` is not importable."""
    try:
        import llama_cpp
    except ImportError:
        return None
    return str(getattr(llama_cpp, "__version__", "?"))


def load_llama(path: str | Path, n_ctx: int = 512, threads: int | None = None, logits_all=False):
    """A ``llama_cpp.Llama`` over a GGUF file (quiet; ``threads`` defaults to torch's)."""
    import llama_cpp
    import torch

    n = threads or torch.get_num_threads()
    return llama_cpp.Llama(
        model_path=str(path),
        n_ctx=n_ctx,
        n_batch=n_ctx,
        n_threads=n,
        n_threads_batch=n,
        logits_all=logits_all,
        verbose=False,
    )


def llama_greedy(llm, prompt_ids: list[int], n: int) -> list[int]:
    """Exactly ``n`` greedy tokens after ``prompt_ids`` (EOS not special), from a fresh cache."""
    llm.reset()
    out: list[int] = []
    for t in llm.generate(prompt_ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, reset=True):
        out.append(int(t))
        if len(out) == n:
            break
    return out


# The OpenMP settings Oficina chooses for torch (the CLI and the Makefile set OMP_WAIT_POLICY=PASSIVE:
# two torch processes spinning against each other ran a LoRA step 9x slower, benchmarks/omp_wait.py)
# are not llama.cpp's: its OpenMP threads meet at every op of a token, and made to sleep there
# they decoded SmolLM2 q8_0 at 33.5 tok/s on 2 threads instead of 99.7 (AMD Zen 4, 2026-12-02,
# README). A speed quoted for llama.cpp is measured as its users run it, in a child process
# whose environment leaves these unset.
OPENMP_WAIT = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def llama_env() -> dict[str, str]:
    """This process's environment without Oficina's OpenMP wait settings (``OPENMP_WAIT``): the
    environment llama.cpp (``llama-server`` too) runs in when its speed is compared."""
    return {k: v for k, v in os.environ.items() if k not in OPENMP_WAIT}


def llama_tokens_per_s(
    path: str | Path, prompts: list[list[int]], n: int, threads: int | None = None
) -> float:
    """Batch-1 decode speed of llama.cpp on a GGUF file, as the engine measures its own: prefill
    + ``n`` greedy tokens for each prompt in turn, total tokens over total time, after a short
    untimed warm-up. Runs in a child process with ``llama_env()`` (loading is not timed);
    ``threads`` defaults to torch's count here."""
    import subprocess
    import sys

    import torch

    job = {"path": str(path), "prompts": prompts, "n": n}
    job["threads"] = threads or torch.get_num_threads()
    r = subprocess.run(
        [sys.executable, "-c", "from oficina.infer.gguf_export import _rate_child; _rate_child()"],
        input=json.dumps(job),
        capture_output=True,
        text=True,
        env=llama_env(),
    )
    if r.returncode:
        tail = (r.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"llama.cpp decode-speed child failed: {tail}")
    return float(json.loads(r.stdout.strip().splitlines()[-1])["tokens_per_s"])


def _rate_child() -> None:
    """The child of ``llama_tokens_per_s``: a job as JSON on stdin, ``{"tokens_per_s": x}`` out."""
    import sys
    import time

    job = json.loads(sys.stdin.read())
    prompts, n = job["prompts"], int(job["n"])
    llm = load_llama(job["path"], n_ctx=max(map(len, prompts)) + n + 8, threads=job["threads"])
    llama_greedy(llm, prompts[0], 4)  # warm-up: first calls allocate and pick kernels
    t0 = time.perf_counter()
    got = sum(len(llama_greedy(llm, ids, n)) for ids in prompts)
    print(json.dumps({"tokens_per_s": got / (time.perf_counter() - t0)}))


def llama_perplexity(llm, windows: list[tuple[list[int], int]]) -> float:
    """Perplexity with llama.cpp's logits over the windows PyTorch scores (the engine's
    ``perplexity_plan``): each (ids, first) scores targets ids[first:] from the ids before them;
    exp(total NLL / total targets).

    ``llm`` must be loaded with ``logits_all=True`` and a context at least as long as a window.
    """
    import math

    nll, n = 0.0, 0
    for ids, first in windows:
        llm.reset()
        llm.eval(ids)
        logits = np.asarray(llm.scores[first - 1 : len(ids) - 1], dtype=np.float64)
        m = logits.max(axis=1, keepdims=True)
        logz = (m + np.log(np.exp(logits - m).sum(axis=1, keepdims=True)))[:, 0]
        nll += float((logz - logits[np.arange(len(logits)), ids[first:]]).sum())
        n += len(ids) - first
    if n == 0:
        raise UserError("no text long enough to score")
    return math.exp(nll / n)
