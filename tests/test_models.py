"""Model sources: specs resolve to HF directories; pickle and unknown specs are refused clearly."""

from __future__ import annotations

import shutil

import pytest
import torch

from oficina.errors import UserError
from oficina.models.presets import PRESETS, preset_config
from oficina.models.sources import load_causal_lm, resolve


def test_local_dir_loads(tiny_lm):
    model, tok = load_causal_lm(str(tiny_lm))
    assert tok.padding_side == "left" and tok.pad_token is not None
    ids = tok("def f(x): return x", return_tensors="pt").input_ids
    with torch.no_grad():
        assert model(ids).logits.shape[-1] == model.config.vocab_size


def test_pickle_only_dir_is_refused(tiny_lm, tmp_path):
    d = tmp_path / "pickled"
    shutil.copytree(tiny_lm, d)
    (d / "model.safetensors").unlink()
    (d / "pytorch_model.bin").write_bytes(b"not really")
    with pytest.raises(UserError, match="pickle"):
        resolve(str(d))


def test_unknown_spec_and_missing_path_messages(tmp_path):
    with pytest.raises(UserError, match="unknown model 'gpt-99'"):
        resolve("gpt-99")
    with pytest.raises(UserError, match="not found"):
        resolve(str(tmp_path / "nope.gguf"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no config.json"):
        resolve(str(tmp_path / "empty"))


def test_hub_id_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="offline"):
        resolve("someorg/some-model-that-is-not-cached")


@pytest.mark.parametrize(
    "name, lo, hi", [("tiny", 0.7e6, 1.3e6), ("mini", 8e6, 12e6), ("small", 40e6, 60e6)]
)
def test_preset_non_embedding_sizes(name, lo, hi):
    from transformers import AutoModelForCausalLM

    cfg = preset_config(name, vocab_size=1000)
    with torch.device("meta"):
        m = AutoModelForCausalLM.from_config(cfg)
    non_emb = sum(
        p.numel() for n, p in m.named_parameters() if "embed_tokens" not in n and "lm_head" not in n
    )
    assert lo < non_emb < hi, (name, non_emb)
    assert set(PRESETS) == {"tiny", "mini", "small"}


@pytest.mark.integration
def test_packaged_smollm2_answers_paris(smollm2):
    from transformers import AutoModelForCausalLM

    # Every checkpoint Oficina writes loads with plain transformers.
    model = AutoModelForCausalLM.from_pretrained(smollm2)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    _, tok = load_causal_lm("smollm2-135m-instruct")
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    enc = tok.apply_chat_template(
        msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = model.generate(**enc, max_new_tokens=16, do_sample=False)
    assert "Paris" in tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
