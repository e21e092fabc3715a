"""Helpers shared by tests in several folders (import as ``from helpers import ...``: pytest puts
tests/ on the path through the root conftest).

``make_tiny_lm`` / ``make_tiny_tokenizer``: the tiny random Llama and its BPE tokenizer behind the
``tiny_lm`` fixture (``random_model_seed``: OFICINA_TEST_SEED).
``write_jsonl`` / ``read_jsonl``: the one JSONL writer and reader of the tests.
``free_port`` / ``wait_healthy`` / ``PATIENCE_S``: for tests that start a real server process.
``chromium_path``: Debian's chromium for the browser tests (fails loudly when absent).
``nll_naive``: the sliding-window perplexity by its definition, one token at a time, sharing no
code with ``oficina.infer.scoring`` (the engine's kernel) — tests compare that kernel, and every
verb that reports a perplexity, with it.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest


def write_jsonl(path: Path, rows: list, extra: str = "") -> Path:
    """Rows as JSONL (UTF-8, non-ASCII kept), plus ``extra`` raw text to plant a bad line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows) + extra
    path.write_text(text, encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# ---------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Waiting on another process: the limits below are hang guards far beyond any slowness (under
# load 20+ on two cores these tests ran 10x slower than alone), never a verdict on speed.
PATIENCE_S = 900.0


def wait_healthy(
    url: str,
    proc: subprocess.Popen,
    timeout: float = PATIENCE_S,
    output: Callable[[], str] = lambda: "",
) -> None:
    """Poll ``url``/health until it answers 200, while ``proc`` is alive."""
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"the server exited with {proc.returncode}:\n{output()}"
        try:
            up = httpx.get(url + "/health", timeout=2).status_code == 200
        except httpx.TransportError:  # not listening yet
            up = False
        if up:
            return
        assert time.monotonic() < deadline, f"{url} did not come up in {timeout:.0f}s\n{output()}"
        time.sleep(0.2)


CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")


def chromium_path() -> str:
    """Debian's chromium (or $OFICINA_CHROMIUM); failing loudly, never skipping, if absent."""
    env = os.environ.get("OFICINA_CHROMIUM")
    for c in ([env] if env else []) + list(CHROMIUM_CANDIDATES):
        if c and Path(c).is_file():
            return c
    found = shutil.which("chromium")
    if found:
        return found
    pytest.fail(
        "no Chromium found (looked at $OFICINA_CHROMIUM, "
        + ", ".join(CHROMIUM_CANDIDATES)
        + "); install it with `apt-get install -y chromium` — the browser test cannot run without it"
    )


# ---------------------------------------------------------------------------- models


def nll_naive(model, tok, text: str, window: int, stride: int) -> tuple[float, int]:
    """(NLL, tokens) of one text: each token alone, from the context its window gives it.

    Token t (1-based after BOS) of the first window (t < window) sees ids[0:t]; a later token
    falls in the window ending at window + k*stride (the first such end >= t + 1, capped at the
    text's end), which starts ``window`` tokens before that end.
    """
    import torch

    ids = [tok.bos_token_id] + tok(text, add_special_tokens=False)["input_ids"]
    nll = 0.0
    with torch.no_grad():
        for t in range(1, len(ids)):
            if t < window:
                start = 0
            else:
                k = math.ceil((t + 1 - window) / stride)
                start = min(len(ids), window + k * stride) - window
            logits = model(torch.tensor([ids[start:t]])).logits[0, -1].float()
            nll -= float(torch.log_softmax(logits, -1)[ids[t]])
    return nll, len(ids) - 1


CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


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


def make_tiny_lora(base: Path, out: Path, seed: int) -> Path:
    """A PEFT LoRA adapter on ``base`` with random non-zero A and B (so it changes the logits)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base)
    peft = get_peft_model(
        model,
        LoraConfig(
            r=4,
            lora_alpha=64,
            target_modules=["q_proj", "v_proj", "o_proj"],
            init_lora_weights=False,  # B random too: the default B = 0 would change nothing
        ),
    )
    peft.save_pretrained(out)
    return out


def assert_greedy_equals_transformers(eng, plain, tok, prompts: list[str], new: int = 24) -> None:
    """``eng``'s greedy continuations of ``prompts`` are token for token those of plain
    ``transformers`` ``generate`` on the same weights (``plain``, ``tok``), EOS stripped."""
    import torch

    from oficina.infer.engine import SamplingParams

    got = eng.generate(prompts, SamplingParams(max_new_tokens=new))
    for prompt, c in zip(prompts, got, strict=True):
        enc = tok(prompt, return_tensors="pt")
        with torch.no_grad():
            out = plain.generate(
                **enc, do_sample=False, max_new_tokens=new, pad_token_id=tok.pad_token_id
            )
        ref = [t for t in out[0, enc.input_ids.shape[1] :].tolist() if t not in eng.eos_ids]
        assert c.token_ids == ref
