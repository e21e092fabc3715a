"""GGUF export without llama.cpp: round trip to the HF model, metadata, refusals.

The f32 round trip must give the original logits bit for bit, read back two ways: our own
reader (de-quantize + un-permute) and transformers' independent GGUF loader, so a q/k
permutation that was wrong in both directions alike could not pass.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from oficina.errors import UserError
from oficina.infer.gguf_export import (
    detect_pre,
    export_gguf,
    permute,
    read_gguf_state_dict,
    unpermute,
)

IDS = torch.tensor(
    [[5, 77, 300, 12, 9, 401, 33, 250, 18, 64, 100, 7], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]]
)


def _hf(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()


def _load_back(tiny_lm, gguf_path):
    meta, state = read_gguf_state_dict(gguf_path)
    model = _hf(tiny_lm)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert missing == ["lm_head.weight"] and unexpected == []  # tied head: reuses the embedding
    return meta, state, model


def test_permute_is_llama_cpp_rope_layout_and_invertible():
    # 2 heads of dim 4: HF rows per head are (x0, x1 | y0, y1) -> GGML pairs (x0, y0, x1, y1)
    w = np.arange(8, dtype=np.float32)[:, None]
    assert permute(w, 2)[:, 0].tolist() == [0, 2, 1, 3, 4, 6, 5, 7]
    r = np.random.default_rng(0).standard_normal((48, 5)).astype(np.float32)
    assert np.array_equal(unpermute(permute(r, 3), 3), r)
    assert not np.array_equal(permute(r, 3), r)


def test_f32_export_gives_identical_logits_and_metadata(tiny_lm, tmp_path):
    from gguf import GGUFReader
    from transformers import AutoTokenizer

    out = tmp_path / "m.gguf"
    info = export_gguf(tiny_lm, out, "f32")
    assert info["pre_tokenizer"] == "gpt-2" and info["tensors"] == 2 + 2 * 9
    ref = _hf(tiny_lm)
    meta, state, model = _load_back(tiny_lm, out)
    with torch.inference_mode():
        assert torch.equal(model(IDS).logits, ref(IDS).logits)

    # the file holds q/k in GGML's rotary layout (not the HF one), as llama.cpp expects
    raw = {t.name: t for t in GGUFReader(str(out)).tensors}
    q_hf = ref.model.layers[0].self_attn.q_proj.weight.detach().numpy()
    k_hf = ref.model.layers[0].self_attn.k_proj.weight.detach().numpy()
    q_file = np.asarray(raw["blk.0.attn_q.weight"].data).reshape(q_hf.shape)
    k_file = np.asarray(raw["blk.0.attn_k.weight"].data).reshape(k_hf.shape)
    assert not np.array_equal(q_file, q_hf)
    assert np.array_equal(q_file, permute(q_hf, 4)) and np.array_equal(k_file, permute(k_hf, 2))
    assert "output.weight" not in raw  # tied embeddings: llama.cpp reuses token_embd

    cfg = json.loads((tiny_lm / "config.json").read_text())
    tj = json.loads((tiny_lm / "tokenizer.json").read_text())
    expected = {
        "general.architecture": "llama",
        "general.file_type": 0,
        "llama.block_count": 2,
        "llama.context_length": 512,
        "llama.embedding_length": 64,
        "llama.feed_forward_length": 128,
        "llama.attention.head_count": 4,
        "llama.attention.head_count_kv": 2,
        "llama.rope.dimension_count": 16,
        "llama.vocab_size": 512,
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "gpt-2",
        "tokenizer.ggml.bos_token_id": cfg["bos_token_id"],
        "tokenizer.ggml.eos_token_id": cfg["eos_token_id"],
        "tokenizer.ggml.padding_token_id": cfg["pad_token_id"],
        "tokenizer.ggml.add_bos_token": False,
        "tokenizer.chat_template": AutoTokenizer.from_pretrained(str(tiny_lm)).chat_template,
    }
    assert {k: meta[k] for k in expected} == expected
    assert meta["llama.rope.freq_base"] == pytest.approx(cfg["rope_parameters"]["rope_theta"])
    assert meta["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(cfg["rms_norm_eps"])
    vocab = tj["model"]["vocab"] | {a["content"]: a["id"] for a in tj["added_tokens"]}
    assert meta["tokenizer.ggml.tokens"] == sorted(vocab, key=vocab.get)
    assert meta["tokenizer.ggml.token_type"][:3] == [3, 3, 3]  # the specials are CONTROL
    assert set(meta["tokenizer.ggml.token_type"][3:]) == {1}  # the rest NORMAL
    assert meta["tokenizer.ggml.merges"] == [" ".join(m) for m in tj["model"]["merges"]]


def test_transformers_reads_our_gguf_independently(tiny_lm, tmp_path):
    """transformers' own GGUF loader (its own un-permute) gives the same logits and tokens."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    export_gguf(tiny_lm, tmp_path / "m.gguf", "f32")
    other = AutoModelForCausalLM.from_pretrained(
        str(tmp_path), gguf_file="m.gguf", dtype=torch.float32
    ).eval()
    with torch.inference_mode():
        assert torch.equal(other(IDS).logits, _hf(tiny_lm)(IDS).logits)
    text = "def f(x):\n    return x ** 2  # 12345 <|im_start|>user"
    tok = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="m.gguf")
    assert tok(text)["input_ids"] == AutoTokenizer.from_pretrained(str(tiny_lm))(text)["input_ids"]


@pytest.mark.parametrize(
    ("kind", "tol", "ratio"), [("q8_0", 0.05, 0.35), ("f16", 5e-3, 0.55), ("bf16", 0.03, 0.55)]
)
def test_quantized_exports_are_close_and_smaller(tiny_lm, tmp_path, kind, tol, ratio):
    f32 = export_gguf(tiny_lm, tmp_path / "f32.gguf", "f32")
    info = export_gguf(tiny_lm, tmp_path / f"{kind}.gguf", kind)
    assert info["tensor_types"] == {kind.upper(): 15, "F32": 5}  # norms stay float32
    assert info["bytes"] < ratio * f32["bytes"]
    meta, _, model = _load_back(tiny_lm, tmp_path / f"{kind}.gguf")
    assert meta["general.file_type"] == {"q8_0": 7, "f16": 1, "bf16": 32}[kind]
    with torch.inference_mode():
        ref, got = _hf(tiny_lm)(IDS).logits, model(IDS).logits
    diff = (got - ref).abs().max().item()
    assert 0 < diff < tol  # rounded, so not identical, but within the stated tolerance


def _copy(tiny_lm, tmp_path):
    d = tmp_path / "copy"
    shutil.copytree(tiny_lm, d)
    return d


def _edit_json(path, fn):
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


def test_refuses_non_llama_architecture(tiny_lm, tmp_path):
    d = _copy(tiny_lm, tmp_path)
    _edit_json(
        d / "config.json",
        lambda c: c.update(architectures=["MistralForCausalLM"], model_type="mistral"),
    )
    with pytest.raises(UserError, match="Llama-architecture models only.*MistralForCausalLM"):
        export_gguf(d, tmp_path / "x.gguf")
    assert not list(tmp_path.glob("x.gguf*"))  # nothing half-written


def test_refuses_non_bpe_and_unknown_pre_tokenizers(tiny_lm, tmp_path):
    d = _copy(tiny_lm, tmp_path)
    tj = d / "tokenizer.json"
    orig = tj.read_text()
    _edit_json(tj, lambda t: t["pre_tokenizer"].update(add_prefix_space=True))
    with pytest.raises(UserError, match="no pre-tokenizer matching"):
        export_gguf(d, tmp_path / "x.gguf")
    tj.write_text(orig)
    _edit_json(tj, lambda t: t.update(decoder={"type": "Metaspace", "replacement": "▁"}))
    with pytest.raises(UserError, match="byte-level"):
        export_gguf(d, tmp_path / "x.gguf")
    tj.unlink()
    with pytest.raises(UserError, match="no tokenizer.json"):
        export_gguf(d, tmp_path / "x.gguf")


def test_pre_tokenizer_from_structure_and_from_llama_cpp_hash(tiny_lm):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_lm))
    tj = json.loads((tiny_lm / "tokenizer.json").read_text())
    assert detect_pre(tok, tj) == "gpt-2"
    tj["pre_tokenizer"] = {
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True},
        ],
    }
    assert detect_pre(tok, tj) == "smollm"


@pytest.mark.integration
def test_smollm2_tokenizer_is_recognised_as_llama_cpp_does(smollm2):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(smollm2))
    tj = json.loads((smollm2 / "tokenizer.json").read_text())
    tj["pre_tokenizer"] = {"type": "Split"}  # the probe-text hash alone decides
    assert detect_pre(tok, tj) == "smollm"


def test_oficina_loads_its_own_gguf_export(tiny_lm, tmp_path, monkeypatch):
    """A ``.gguf`` spec goes through oficina.models.sources: same greedy text as the original."""
    from oficina.infer.engine import Engine, SamplingParams

    monkeypatch.setenv("OFICINA_CACHE", str(tmp_path / "cache"))  # keep the user's cache clean

    out = tmp_path / "m.gguf"
    export_gguf(tiny_lm, out, "f32")
    p = SamplingParams(max_new_tokens=12)
    prompts = ["def ", "The Python language"]
    a = Engine.from_spec(str(tiny_lm)).generate(prompts, p)
    b = Engine.from_spec(str(out)).generate(prompts, p)
    assert [c.token_ids for c in a] == [c.token_ids for c in b]


def test_a_re_exported_gguf_of_the_same_name_and_size_is_converted_again(
    tiny_lm, tmp_path, monkeypatch
):
    """The conversion cache is keyed by content, not name + size (a stale model was served)."""
    from safetensors.torch import load_file, save_file

    from oficina.models.sources import resolve

    monkeypatch.setenv("OFICINA_CACHE", str(tmp_path / "cache"))

    changed = tmp_path / "changed"
    shutil.copytree(tiny_lm, changed)
    sd = load_file(changed / "model.safetensors")
    sd["model.norm.weight"] = sd["model.norm.weight"] * 2
    save_file(sd, changed / "model.safetensors", metadata={"format": "pt"})
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
    export_gguf(tiny_lm, tmp_path / "a" / "m.gguf", "f32")
    export_gguf(changed, tmp_path / "b" / "m.gguf", "f32")
    assert (tmp_path / "a" / "m.gguf").stat().st_size == (tmp_path / "b" / "m.gguf").stat().st_size
    first = resolve(str(tmp_path / "a" / "m.gguf"))
    second = resolve(str(tmp_path / "b" / "m.gguf"))
    assert first != second and first.parent == tmp_path / "cache" / "models"
    norm = [load_file(d / "model.safetensors")["model.norm.weight"] for d in (first, second)]
    assert torch.equal(norm[1], norm[0] * 2)


def test_llama_speed_runs_in_a_child_without_oficinas_openmp_wait_policy(monkeypatch):
    """llama.cpp is timed as its users run it: OMP_WAIT_POLICY=PASSIVE (set for torch by the CLI)
    made it 3x slower on 2 threads, so the child's environment leaves it (and the spin count)
    out and keeps everything else."""
    import subprocess

    from oficina.infer import gguf_export as gx

    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    monkeypatch.setenv("GOMP_SPINCOUNT", "1000")
    monkeypatch.setenv("OFICINA_PROBE", "kept")
    seen = {}

    def fake_run(cmd, input, env, **kw):
        seen.update(cmd=cmd, job=json.loads(input), env=env)
        return subprocess.CompletedProcess(cmd, 0, stdout='{"tokens_per_s": 12.5}\n', stderr="")

    monkeypatch.setattr(subprocess, "run", fake_run)
    assert gx.llama_tokens_per_s("m.gguf", [[1, 2, 3]], 7, threads=3) == 12.5
    env = seen["env"]
    assert "OMP_WAIT_POLICY" not in env and "GOMP_SPINCOUNT" not in env
    assert env["OFICINA_PROBE"] == "kept" and env == gx.llama_env()
    assert seen["job"] == {"path": "m.gguf", "prompts": [[1, 2, 3]], "n": 7, "threads": 3}
    assert "_rate_child" in seen["cmd"][-1]

    def failing(cmd, input, env, **kw):
        return subprocess.CompletedProcess(cmd, 1, stdout="", stderr="Traceback\nOSError: bad gguf")

    monkeypatch.setattr(subprocess, "run", failing)
    with pytest.raises(RuntimeError, match="OSError: bad gguf"):
        gx.llama_tokens_per_s("m.gguf", [[1]], 2)
