"""Shared fixtures: an isolated workspace per test and a tiny random Llama with a real BPE tokenizer.

The tiny model (64-d, 2 layers, 512-token byte-level BPE trained on the Python reference) loads
in milliseconds, so unit tests of every verb run in seconds. Tests that need the real packaged
SmolLM2 or MiniLM are marked ``integration`` (they still run in CI).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@pytest.fixture(autouse=True)
def isolated_workspace(tmp_path, monkeypatch):
    """Every test gets its own $OFICINA_HOME; the model cache stays shared (conversions are slow)."""
    ws = tmp_path / "ws"
    monkeypatch.setenv("OFICINA_HOME", str(ws))
    return ws


def make_tiny_tokenizer(out: Path, vocab_size: int = 512):
    from pydoc_data.topics import topics

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(list(topics.values())[:20], trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)
    return fast


def make_tiny_lm(out: Path, seed: int = 0, layers: int = 2, hidden: int = 64) -> Path:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tok = make_tiny_tokenizer(out)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
    )
    model.save_pretrained(out)
    return out


def random_model_seed() -> int:
    """OFICINA_TEST_SEED (default 0): the seed of tiny_lm's random weights."""
    return int(os.environ.get("OFICINA_TEST_SEED", "0"))


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory) -> Path:
    """A tiny random Llama HF directory (safetensors + tokenizer.json + chat template).

    OFICINA_TEST_SEED draws other random weights: a test that passes only for seed 0 leans on
    what one random model happens to generate, which another CPU can change (CI did).
    """
    return make_tiny_lm(tmp_path_factory.mktemp("tiny-lm"), seed=random_model_seed())


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """The real packaged SmolLM2-135M-Instruct, converted once into the shared cache."""
    from oficina.models.sources import resolve

    return resolve("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]
