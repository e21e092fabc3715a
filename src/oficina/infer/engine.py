"""The generation engine every inference verb shares: one decode loop over a Hugging Face model.

    from oficina.infer.engine import Engine, SamplingParams
    eng = Engine.from_spec("smollm2-135m-instruct")
    prompt = eng.render_chat([{"role": "user", "content": "What is the capital of France?"}])
    print(eng.generate([prompt], SamplingParams(max_new_tokens=32))[0].text)

What it does, and why it is written out rather than calling ``model.generate``:
  * a **step-level** decode loop (``DecodeBatch``): every row has its own KV slot in a
    preallocated cache (``oficina.infer.kv_slots.SlotCache``) with its own length, position ids
    and mask, so a row can join between any two steps (its prompt prefilled in chunks of
    ``PREFILL_CHUNK`` tokens, interleaved with the decode steps of the rows already running;
    prompts waiting together are prefilled together, one left-padded forward a step) and
    leaves the moment it is done or cancelled. ``generate`` and ``stream`` drive one; the
    server's continuous scheduler keeps one per model. No step allocates anything that grows
    with the length (no ``torch.cat`` of the cache or the mask);
  * **per-request** sampling parameters in one batch (temperature, top-k, top-p, repetition
    penalty, seed — each row has its own ``torch.Generator``, so a seed gives the same text
    whatever else shares the batch);
  * stop strings cut from the text, EOS, ``max_new_tokens`` bounded by the context length;
    ``min_tokens`` and ``ignore_eos`` (vLLM's fields) make the length deterministic;
  * **streaming**: ``on_token(i, delta)`` once per decode step of each running row, with the text
    row i gained (possibly empty: text that might be the start of a stop string, or half a UTF-8
    character, is held back); returning False cancels that row;
  * **log-probabilities** of completion tokens (chosen + top-N) and, with ``echo``, of the prompt
    tokens; ``score_ids`` for token ids scored exactly as given;
  * **prefix caching**: a prompt that starts with blocks of tokens an earlier prompt had (a
    shared instruction, few-shot examples) starts from their stored keys and values and
    prefills only the rest (``oficina.infer.prefix_cache``; ``Engine.prefix_cache``);
  * **scoring**, the one place Oficina computes it: ``loglikelihood`` / ``score_continuations``
    (lm-eval's context/continuation split, each context run once) and ``perplexity`` /
    ``text_nll`` (sliding window with BOS, token-weighted); the kernels and both definitions
    are in ``oficina.infer.scoring``.
Greedy output equals ``model.generate(do_sample=False)`` (tested on a tiny model).
"""

from __future__ import annotations

import collections
import contextlib
import math
import os
import secrets
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from oficina.errors import UserError
from oficina.infer import scoring
from oficina.infer.fuse import fuse_projections
from oficina.infer.int8 import RECIPE, Int8Linear, dynamic_available, load_int8, one_row_kernel
from oficina.infer.kv_slots import RESERVE_AHEAD, SlotCache, check_supported
from oficina.infer.layout import relayout_for_decode
from oficina.infer.prefix_cache import PrefixCache, shared_prefix_cache
from oficina.infer.row_linear import kernel as row_kernel
from oficina.infer.row_linear import use_row_kernel
from oficina.infer.scoring import ContinuationScore, TextNLL

# Files whose bytes decide what the engine outputs; their hash is the model's identity for caches.
_IDENTITY_GLOBS = (
    "*.safetensors",
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "*.model",
    "chat_template.jinja",
    "oficina-quantization.json",
    "adapter_config.json",
)


def model_hash_for(
    path: str | Path, adapter: str | Path | None = None, dtype: str = "float32"
) -> str:
    """The content hash ``Engine.model_hash`` would give, without loading the model."""
    import hashlib

    from oficina.workspace import content_hash

    h = hashlib.sha256(f"dtype={dtype}\n".encode())
    for root in [Path(p) for p in (path, adapter) if p is not None]:
        files = sorted({f for g in _IDENTITY_GLOBS for f in root.glob(g) if f.is_file()})
        for f in files:
            h.update(f"{f.name}={content_hash(f)}\n".encode())
    return h.hexdigest()


def check_lm_adapter(folder: Path) -> Path:
    """Refuse an adapter trained with a classification/regression head (PEFT ``SEQ_CLS``).

    Its LoRA weights were trained to feed a head the engine never runs, so generating or scoring
    labels with the language model under them gives a number that means nothing (measured: the
    demo task's tuned LoRA classifier, 0.352 through its head, scored 0.242 when ``eval`` ran it
    through the language model). ``oficina eval --adapter`` now runs such an adapter through its
    head instead (``evals.evaluate.load_head``); generate, serve and batch refuse it here.
    """
    import json

    try:
        task_type = json.loads((folder / "adapter_config.json").read_text()).get("task_type")
    except (OSError, ValueError):
        return folder  # unreadable: PEFT's own loading says what is wrong with it
    if task_type == "SEQ_CLS":
        raise UserError(
            f"{folder} is a classification-head adapter (PEFT task_type SEQ_CLS): the generation "
            "engine (generate, serve, batch) runs language-model adapters only (oficina eval "
            "runs its head); train one with a prompt template (SFT) to use it here",
            exit_code=2,
        )
    return folder


class ContextLengthError(UserError):
    """The prompt alone fills the model's context: nothing can be generated."""


@dataclass
class SamplingParams:
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None  # same seed -> same text
    logprobs: int | None = None  # None: off; N: chosen token + top-N alternatives per token
    echo: bool = False  # also score the prompt tokens (prompt_logprobs)
    # vLLM's two length controls (OpenAI-compatible servers accept them as request fields):
    # no end-of-sequence token and no stop string before min_tokens tokens; ignore_eos keeps
    # generating past EOS up to max_new_tokens. They make length independent of what a model
    # happens to generate — benchmarks and tests rely on that.
    min_tokens: int = 0
    ignore_eos: bool = False

    def validate(self) -> None:
        """Raise UserError naming the first bad field (the server maps it to a 400)."""
        if self.max_new_tokens < 0:
            raise UserError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if not (self.temperature >= 0 and math.isfinite(self.temperature)):
            raise UserError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise UserError(f"top_k must be >= 0, got {self.top_k}")
        if not (0 < self.top_p <= 1):
            raise UserError(f"top_p must be in (0, 1], got {self.top_p}")
        if not (self.repetition_penalty > 0 and math.isfinite(self.repetition_penalty)):
            raise UserError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if not (0 <= self.min_tokens <= self.max_new_tokens):
            raise UserError(
                f"min_tokens must be between 0 and max_new_tokens ({self.max_new_tokens}), "
                f"got {self.min_tokens}"
            )
        if self.logprobs is not None and not (0 <= self.logprobs <= 20):
            raise UserError(f"logprobs must be between 0 and 20, got {self.logprobs}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise UserError("stop strings must be non-empty text")


@dataclass
class TokenLogprob:
    token: str
    token_id: int
    logprob: float | None
    # Best alternatives, most likely first. A list, not a dict: two ids can decode to the same
    # text (byte-level pieces of one character both decode to U+FFFD), and a dict keyed by text
    # would silently drop one of them.
    top: list[tuple[str, float]]


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" | "length" | "cancelled"
    prompt_tokens: int
    completion_tokens: int
    logprobs: list[TokenLogprob] | None = None
    prompt_logprobs: list[TokenLogprob] | None = None  # first token's logprob is None


def _held_back(text: str, stops: list[str]) -> int:
    """How many trailing characters might still become a stop string (or a whole character)."""
    hold = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                hold = max(hold, k)
                break
    n = len(text) - len(text.rstrip("\ufffd"))  # an incomplete UTF-8 sequence decodes as U+FFFD
    return max(hold, n)


class Row:
    """Decoding state of one request (``Engine.make_rows`` builds them; ``DecodeBatch`` runs them)."""

    def __init__(self, index: int, prompt_ids: list[int], params: SamplingParams, limit: int):
        self.index = index
        self.prompt_ids = prompt_ids
        self.params = params
        self.limit = limit  # max new tokens after the context-length bound
        self.generated: list[int] = []
        self.steps = 0  # tokens the model produced, EOS included (what the row cost)
        self.text = ""
        self.emitted = 0
        self.finish: str | None = None
        self.logprobs: list[TokenLogprob] | None = [] if params.logprobs is not None else None
        self.prompt_logprobs: list[TokenLogprob] | None = None
        # where the row is in a DecodeBatch: its KV slot, prompt tokens prefilled so far, the
        # logits to sample its next token from, the token to feed at the next decode step
        self.slot: int | None = None
        self.fed = 0
        self.logits: torch.Tensor | None = None
        self.next_token = 0
        self.echo_logits: list[torch.Tensor] = []
        # the LoRA adapter this row runs with when its engine shares a base with others
        # (``oficina.infer.adapters``): PEFT's adapter name, "__base__" for none; None otherwise
        self.adapter: str | None = None
        # the engine that made this row: its model_hash (base + this row's adapter + dtype) keys
        # the row's prompt in the prefix cache, whichever view of a shared base runs the batch
        self.owner: Engine | None = None
        self.seen = torch.tensor(sorted(set(prompt_ids)), dtype=torch.long)
        if params.temperature > 0:
            seed = params.seed if params.seed is not None else secrets.randbits(63)
            self.gen: torch.Generator | None = torch.Generator().manual_seed(seed)
        else:
            self.gen = None


class Engine:
    """A loaded causal LM + tokenizer, with batched, streaming, scoring generation."""

    def __init__(
        self,
        model,
        tokenizer,
        name: str = "model",
        path: Path | None = None,
        adapter: Path | None = None,
        dtype: str = "float32",
        adapter_name: str | None = None,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.path = path
        self.adapter = adapter
        self.dtype = dtype
        cfg = model.config
        n = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
        self.context_length = int(n or 2048)
        eos = set()
        gen_cfg = getattr(model, "generation_config", None)
        for src in (getattr(gen_cfg, "eos_token_id", None), tokenizer.eos_token_id):
            if isinstance(src, int):
                eos.add(src)
            elif src:
                eos.update(int(x) for x in src)
        self.eos_ids = eos
        self._model_hash: str | None = None
        self._decode_forward = None  # set by compile_decode
        # int8 or 16-bit weights: an explicit OFICINA_DECODE_THREADS applies to its one-row
        # decode steps; int8 layers: their one-row calls may run the dynamic kernel, which gets
        # one thread by default (decode_threads)
        self.narrow_weights = any(
            t.dtype in (torch.int8, torch.bfloat16, torch.float16)
            for t in (*model.parameters(), *model.buffers())
        )
        self.int8_layers = any(isinstance(m, Int8Linear) for m in model.modules())
        # KV of prompt prefixes reused across calls (oficina.infer.prefix_cache); None = off.
        # Only a model loaded from files gets it: its identity (model_hash) is its files, while an
        # in-memory model may be trained between two calls, which a memoised hash would not see.
        self.prefix_cache: PrefixCache | None = shared_prefix_cache() if path is not None else None
        # set for a view of a base shared with other adapters (oficina.infer.adapters): PEFT's
        # name of this engine's adapter; its rows carry it, so rows of different adapters share
        # a DecodeBatch
        self.adapter_name = adapter_name
        compile_all = os.environ.get("OFICINA_COMPILE", "").lower() not in ("", "0", "false", "no")
        if compile_all and adapter_name is None:  # a view of a shared base runs eager (below)
            self.compile_decode()

    def compile_decode(self, mode: str | None = None) -> None:
        """Run decode steps (one token per row) through ``torch.compile`` of the model's forward.

        Opt-in (``OFICINA_COMPILE=1`` does it for every engine): the first steps compile for
        about a minute, and again once for the first batch of more than one row; the slot cache
        keeps shapes few (rows and length are dynamic), so there are no further recompiles.
        Prefill stays eager. Worth it only for long runs; see ``benchmarks/generate.py``.

        Refused for a view of a shared base (``oficina.infer.adapters``): its forward takes the
        rows' adapter names, a list of strings that ``torch.compile`` would guard on, so every
        new mix of adapters in a batch would recompile (a minute each) until the recompile
        limit silently sent it back to eager.
        """
        if self.adapter_name is not None:
            raise UserError(
                f"model '{self.name}' shares its base with other LoRA adapters, whose per-row "
                "adapter choice the compiled decode step does not support; unset "
                "OFICINA_COMPILE, or serve the adapter as its own model (merge it, or "
                "`oficina serve BASE+ADAPTER` alone) to compile it"
            )
        import torch._dynamo.config as dynamo_config  # imported here: heavy, and only for this

        dynamic_available()  # settled now: the trace must not run its probe (int8.Int8Linear)
        compiled = torch.compile(self.model.forward, dynamic=True, mode=mode)

        def step(*args, **kwargs):
            # Guards are built when a call compiles; with this flag dynamo checks the model's
            # modules by their __dict__ version tags (a module whose attributes are unchanged
            # skips its subtree's guards) instead of every guard on every call: the guard check
            # of a one-row SmolLM2 int8 step fell from 1.99 to 0.81 ms (profiled, 2026-11-30).
            # Its assumption — no tensor of the model changes dtype, shape or device in place —
            # holds for an engine (weights are only replaced or written), and the flag is set
            # only for these calls, so other compiles in the process (training) keep the default.
            before = dynamo_config.use_recursive_dict_tags_for_guards
            dynamo_config.use_recursive_dict_tags_for_guards = True
            try:
                return compiled(*args, **kwargs)
            finally:
                dynamo_config.use_recursive_dict_tags_for_guards = before

        self._decode_forward = step

    def decode_threads(self) -> int:
        """torch threads of this engine's one-row decode steps now (0: torch's count); the rule
        and its measurements are at ``DECODE_THREADS``."""
        if DECODE_THREADS is not None:
            return DECODE_THREADS if self.narrow_weights else 0
        return 1 if self.int8_layers and one_row_kernel() == "dynamic" else 0

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_spec(
        cls,
        spec: str,
        dtype: str = "float32",
        adapter: str | None = None,
        name: str | None = None,
        fuse: bool = True,
    ) -> Engine:
        """Load a model spec (see ``oficina.models.sources``), optionally a PEFT LoRA adapter.

        A directory written by ``oficina quantize --method int8`` (int8 weights + a recipe) is
        loaded by ``oficina.infer.int8.load_int8``. Without an adapter (whose LoRA layers wrap
        q/k/v), q/k/v and gate/up become one matmul each (``oficina.infer.fuse``; ``fuse=False``
        keeps them apart). Float32 and bfloat16 ``nn.Linear`` layers then run their one-row
        calls on ``oficina.infer.row_linear``'s GEMV; where it cannot be built, float32 weights
        with more outputs than inputs are stored column-major for MKL's (``oficina.infer.layout``).
        """
        from transformers.utils import logging as hf_logging

        from oficina.models.sources import load_causal_lm, resolve

        hf_logging.disable_progress_bar()  # keep stderr for our own numbers
        path = resolve(spec)
        int8 = (path / RECIPE).is_file()
        if adapter and int8:
            raise UserError(
                f"{spec} is an int8 directory, which takes no adapter; merge the adapter into "
                "the float model first, then quantize that"
            )
        model, tok = load_int8(path, dtype) if int8 else load_causal_lm(spec, dtype=dtype)
        if fuse and not adapter:
            fuse_projections(model)  # fewer, larger matmuls per decode step
        if row_kernel() == "C++":  # one-row calls on oficina.infer.row_linear's GEMV
            use_row_kernel(model)
        else:  # MKL's GEMV: float32 tall weights column-major are faster (oficina.infer.layout)
            relayout_for_decode(model)
        adapter_path = None
        if adapter:
            from peft import PeftModel

            from oficina.models.safety import check_adapter_dir, load_errors

            # PEFT reads adapter_model.safetensors first and falls back to a pickle: the gate
            # makes sure the first exists and is sound, so the fallback never happens.
            adapter_path = check_lm_adapter(check_adapter_dir(adapter))
            with load_errors(adapter_path, "adapter"), warnings.catch_warnings():
                # peft reads transformers 5's deprecated alias: theirs, not the user's.
                warnings.filterwarnings(
                    "ignore", message=".*is_gradient_checkpointing", category=FutureWarning
                )
                model = PeftModel.from_pretrained(model, str(adapter_path))
            model.eval()
            adapter_path = adapter_path.resolve()
        return cls(model, tok, name=name or spec, path=path, adapter=adapter_path, dtype=dtype)

    @property
    def model_hash(self) -> str:
        """sha256 over the weights, config, tokenizer files (+ adapter) and the dtype; memoised."""
        if self._model_hash is None:
            if self.path is not None:
                self._model_hash = model_hash_for(self.path, self.adapter, self.dtype)
            else:  # an in-memory model: its identity is its weights
                import hashlib

                h = hashlib.sha256(f"dtype={self.dtype}\n".encode())
                for k, v in self.model.state_dict().items():
                    h.update(k.encode())
                    h.update(v.detach().float().cpu().numpy().tobytes())
                self._model_hash = h.hexdigest()
        return self._model_hash

    # ------------------------------------------------------------------ text helpers
    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def render_chat(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """Messages -> prompt text with the tokenizer's chat template."""
        if not self.has_chat_template:
            raise UserError(
                f"model '{self.name}' has no chat template; send a plain prompt instead"
            )
        for m in messages:
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise UserError("each message needs a 'role' and a 'content'")
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def encode(self, text: str) -> list[int]:
        """Prompt text -> token ids. Special tokens (BOS) are added unless the text has them."""
        bos = self.tokenizer.bos_token
        add = not (bos and text.startswith(bos))
        return list(self.tokenizer(text, add_special_tokens=add)["input_ids"])

    def count_tokens(self, text: str) -> int:
        return len(self.encode(text))

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _token_str(self, tid: int) -> str:
        return self.tokenizer.decode([tid])

    def _top(self, logp: torch.Tensor, n: int) -> list[tuple[str, float]]:
        if n <= 0:
            return []
        vals, ids = torch.topk(logp, min(n, logp.shape[-1]))
        return [(self._token_str(int(i)), float(v)) for v, i in zip(vals, ids, strict=True)]

    # ------------------------------------------------------------------ sampling
    @staticmethod
    def _choose(logits: torch.Tensor, row: Row) -> int:
        """One token from one row's logits (1-D, float32), HF's processor order."""
        p = row.params
        if p.repetition_penalty != 1.0 and row.seen.numel():
            s = logits[row.seen]
            logits = logits.clone()
            logits[row.seen] = torch.where(
                s < 0, s * p.repetition_penalty, s / p.repetition_penalty
            )
        if p.temperature == 0:
            return int(torch.argmax(logits))
        logits = logits / p.temperature
        if p.top_k > 0 and p.top_k < logits.shape[-1]:
            kth = torch.topk(logits, p.top_k).values[-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if p.top_p < 1.0:
            sorted_logits, idx = torch.sort(logits, descending=False)
            cum = sorted_logits.softmax(-1).cumsum(-1)
            remove = cum <= (1 - p.top_p)
            remove[-1] = False  # keep at least the most likely token
            logits = logits.masked_fill(remove.scatter(0, idx, remove), float("-inf"))
        # Extreme but valid parameters (temperature or repetition penalty of 1e-300) overflow
        # the logits to inf; keep the arithmetic finite and fall back to the most likely token.
        logits = torch.nan_to_num(logits, nan=float("-inf"), posinf=torch.finfo(logits.dtype).max)
        probs = logits.softmax(-1)
        if not bool(torch.isfinite(probs).all()) or float(probs.sum()) <= 0:
            return int(torch.argmax(logits))
        return int(torch.multinomial(probs, 1, generator=row.gen))

    # ------------------------------------------------------------------ the decode loop
    def make_rows(self, prompts: list[str], params: list[SamplingParams]) -> list[Row]:
        """Validate and encode prompts into rows for a ``DecodeBatch`` (``Row.index`` = position)."""
        rows = []
        for i, (text, p) in enumerate(zip(prompts, params, strict=True)):
            p.validate()
            ids = self.encode(text)
            if not ids:  # an empty prompt: start from BOS (or EOS) so there is a context
                start = self.tokenizer.bos_token_id
                ids = [start if start is not None else next(iter(self.eos_ids), 0)]
            room = self.context_length - len(ids)
            if room <= 0 and p.max_new_tokens > 0:
                raise ContextLengthError(
                    f"prompt {i} has {len(ids)} tokens; the context of '{self.name}' is "
                    f"{self.context_length} tokens, so no room is left to generate"
                )
            row = Row(i, ids, p, max(0, min(p.max_new_tokens, room)))
            row.adapter, row.owner = self.adapter_name, self
            rows.append(row)
        return rows

    def _advance(self, r: Row) -> str:
        """Re-decode row r's text, apply stop strings; return the text that is now safe to show."""
        text = self._decode(r.generated)
        # No stop string before min_tokens tokens (vLLM's rule): it would end the row early.
        stops = r.params.stop if len(r.generated) >= r.params.min_tokens else []
        if stops:
            # Only the new tail can hold a new stop string; search from just before it.
            start = max(0, len(r.text) - max(len(s) for s in stops))
            hits = [i for i in (text.find(s, start) for s in stops) if i >= 0]
            if hits:
                text = text[: min(hits)]
                r.finish = "stop"
        r.text = text
        safe = len(text) if r.finish else len(text) - _held_back(text, stops)
        if safe > r.emitted and text.startswith(text[: r.emitted]):
            delta = text[r.emitted : safe]
            r.emitted = safe
            return delta
        return ""

    def token_logprob(self, logp: torch.Tensor, tid: int, top: int) -> TokenLogprob:
        """Token ``tid`` under one row of log-probabilities, with its ``top`` alternatives."""
        return TokenLogprob(self._token_str(tid), tid, float(logp[tid]), self._top(logp, top))

    def score_sequence(self, logits: torch.Tensor, ids: list[int], top: int) -> list[TokenLogprob]:
        """Per-token logprobs of a sequence from the logits at its positions (first is None)."""
        lp = torch.log_softmax(logits, -1)
        first = TokenLogprob(self._token_str(ids[0]), ids[0], None, [])
        return [first] + [self.token_logprob(lp[t - 1], ids[t], top) for t in range(1, len(ids))]

    def completion(self, r: Row) -> Completion:
        return Completion(
            text=r.text,
            token_ids=list(r.generated),
            finish_reason=r.finish or "length",
            prompt_tokens=len(r.prompt_ids),
            completion_tokens=r.steps,
            logprobs=r.logprobs,
            prompt_logprobs=r.prompt_logprobs,
        )

    # ------------------------------------------------------------------ public API
    def generate(
        self,
        prompts: list[str],
        params: SamplingParams | list[SamplingParams],
        on_token: Callable[[int, str], bool | None] | None = None,
    ) -> list[Completion]:
        """Generate for a batch of prompts; see the module docstring."""
        if not prompts:
            return []
        plist = params if isinstance(params, list) else [params] * len(prompts)
        if len(plist) != len(prompts):
            raise UserError(f"{len(prompts)} prompts but {len(plist)} sampling params")
        rows = self.make_rows(prompts, plist)
        self.run(rows, None if on_token is None else lambda r, delta: on_token(r.index, delta))
        return [self.completion(r) for r in rows]

    def run(
        self, rows: list[Row], on_token: Callable[[Row, str], bool | None] | None = None
    ) -> None:
        """Run rows to the end in one ``DecodeBatch`` of this engine. Rows made by other views
        of a shared base (``oficina.infer.adapters``) may be among them, each with its adapter.
        ``on_token(row, delta)`` as in ``generate``; returning False cancels that row."""
        batch = DecodeBatch(self)
        for r in rows:
            batch.add(r)
        while batch:
            for r, delta in batch.step():
                if on_token is not None and on_token(r, delta) is False:
                    batch.cancel(r)

    def stream(self, prompt: str, params: SamplingParams) -> Iterator[str]:
        """Text deltas of one prompt as they are produced; stop iterating to cancel."""
        batch = DecodeBatch(self)
        batch.add(self.make_rows([prompt], [params])[0])
        while batch:
            yield from (delta for _, delta in batch.step() if delta)

    # ------------------------------------------------------------------ scoring
    def score_ids(self, ids: list[int], top: int) -> tuple[list[TokenLogprob], torch.Tensor]:
        """Token ids scored exactly as given: their TokenLogprobs (first is None) and the
        log-probabilities of the token that would come next."""
        with torch.inference_mode():
            logits = self.model(input_ids=torch.tensor([ids])).logits[0].float()
        return self.score_sequence(logits, ids, top), torch.log_softmax(logits[-1], -1)

    def score_continuations(
        self,
        contexts: list[str],
        continuations: list[list[str]],
        batch_size: int = 8,
        max_rows: int = 32,
        end_id: int | None = None,
    ) -> tuple[list[list[ContinuationScore]], list[int], int]:
        """Each context's continuations scored, the context run once (``oficina.infer.scoring``;
        ``end_id``: a token read after each continuation too).

        Returns (scores[i][j], context token counts, contexts cut on the left to fit).
        """
        return scoring.score_continuations(
            self, contexts, continuations, batch_size, max_rows, end_id=end_id
        )

    def loglikelihood(
        self, requests: list[tuple[str, str]], batch_size: int = 8
    ) -> list[tuple[float, bool]]:
        """(context, continuation) -> (sum of continuation logprobs, continuation is greedy).

        The continuation's tokens are lm-evaluation-harness's: context + continuation encoded
        together, the tokens past the context's own encoding (trailing whitespace of the context
        moves to the continuation); see ``oficina.infer.scoring``.
        """
        return scoring.loglikelihood(self, requests, batch_size)

    def text_nll(
        self, texts: list[str], window: int | None = 1024, stride: int | None = None
    ) -> TextNLL:
        """Per-text NLL and token counts under the one perplexity definition (sliding window of
        ``min(window, context)`` tokens, stride half a window, BOS first)."""
        return scoring.text_nll(self, texts, window, stride)

    def perplexity(
        self, texts: list[str], window: int | None = 1024, stride: int | None = None
    ) -> float:
        """exp(total NLL / total tokens) over all texts; see ``text_nll``."""
        return self.text_nll(texts, window, stride).perplexity


# Prompt tokens prefilled per decode step: a long prompt is written in chunks of this many tokens,
# one chunk (or several short prompts, in one forward) between two decode steps, so rows already running keep
# getting a token per step. Chunk boundaries are fixed within a prompt (multiples of this), so a
# row's numbers do not depend on what else shares the batch.
PREFILL_CHUNK = 256

# Threads of a decode step with one row (``Engine.decode_threads``). By default
# (``OFICINA_DECODE_THREADS`` unset or "auto") one thread where its int8 layers run fbgemm's
# dynamic kernel (``OFICINA_INT8_DECODE=dynamic``), torch's count everywhere else; a whole number
# sets that many for every model with int8 or 16-bit weights (float32 keeps torch's count), 0 =
# torch's count always. A one-row step is ~120 small matmuls, and on 2 threads each wakes the
# second OpenMP thread (tens of us, PASSIVE waiting: src/oficina/cli.py) for little work to
# share. SmolLM2, 2 cores, benchmarks/generate.py --both-threads, 2026-11-30, one thread vs 2:
# fbgemm's dynamic kernel, the fastest int8 path, gained on a quiet machine (load ~1: 1.27x
# eager), with the machine as it was (load ~5: 1.16x eager, 1.07x compiled) and beside a busy
# loop (load ~4: 1.20x, 1.07x); bfloat16 lost quiet (0.84x) and was within 5% loaded;
# weight-only int8 lost quiet (0.92x), tied beside the busy loop (1.01x, 1.00x) and won only as
# it was (1.11x, 1.14x). Prefill, scoring, batched steps and training keep torch's count.
# Set per step and restored: the count (OpenMP's, and MKL's, which is process-wide) is changed
# only inside it.
_SETTING = os.environ.get("OFICINA_DECODE_THREADS", "auto")
try:
    DECODE_THREADS: int | None = None if _SETTING in ("", "auto") else int(_SETTING)
except ValueError:
    DECODE_THREADS = -1
if DECODE_THREADS is not None and DECODE_THREADS < 0:
    raise UserError(
        f"OFICINA_DECODE_THREADS={_SETTING!r}: use 'auto' (the default: one thread for the "
        "dynamic int8 kernel, torch's count otherwise), a whole number of threads for one-row "
        "decode steps of int8 and 16-bit models, or 0 for torch's count",
        exit_code=2,  # a setting, as OFICINA_PREFIX_CACHE_MB's
    )


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    """torch's intra-op thread count is ``n`` inside (no change for 0 or the current count)."""
    before = torch.get_num_threads()
    if n <= 0 or n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class DecodeBatch:
    """Rows advanced together, one decode step at a time, each in its own KV slot.

        batch = DecodeBatch(engine, max_rows=16)
        batch.add(row)                        # between any two steps
        while batch:                          # rows not finished (waiting, prefilling, running)
            for row, delta in batch.step():   # one step; every running row gets a token
                if client_gone:
                    batch.cancel(row)         # leaves before the next forward

    ``step`` samples one token for every running row (yielding ``(row, new text)``, also when the
    text is held back, so a caller's per-token check runs every step), lets finished and
    cancelled rows leave (their slots are reused at once), runs one decode forward for the rows
    that remain, then prefills waiting prompts — at most ``chunk`` tokens' worth, all in one
    forward — into free slots (at most ``max_rows`` rows hold a slot; 0 = no bound). A prefilled row is sampled from the
    next step on. The KV layout is ``oficina.infer.kv_slots.SlotCache``.
    """

    def __init__(self, engine: Engine, max_rows: int = 0, chunk: int = PREFILL_CHUNK):
        why = check_supported(engine.model.config)
        if why:
            raise UserError(
                f"model '{engine.name}' uses {why}; the generation engine supports "
                "full-attention models only"
            )
        self.engine = engine
        self.max_rows = max(0, int(max_rows))
        self.chunk = max(1, int(chunk))
        config = engine.model.config
        self.dtype = next(engine.model.parameters()).dtype
        impl = getattr(config, "_attn_implementation", None) or "sdpa"
        self.cache = SlotCache(config, float_mask=impl != "sdpa")
        self.waiting: collections.deque[Row] = collections.deque()
        self.running: list[Row] = []  # running[s] is in slot s
        # prompts being prefilled, oldest first, in slots len(running)..len(self)-1 (any order)
        self.filling: list[Row] = []
        self._eos = torch.tensor(sorted(engine.eos_ids), dtype=torch.long)

    def __len__(self) -> int:
        return len(self.waiting) + len(self.running) + len(self.filling)

    def add(self, row: Row) -> None:
        """Queue a row; its prompt is prefilled at the next steps, as slots and budget allow."""
        if (row.adapter is None) != (self.engine.adapter_name is None):
            raise ValueError(
                "a row joins a DecodeBatch of the same model: rows of adapters on a shared base "
                "(oficina.infer.adapters) mix only with each other"
            )
        if row.limit == 0 and not row.params.echo:
            row.finish = "length"  # nothing to generate, nothing to score
            return
        self.waiting.append(row)
        rows = len(self) if not self.max_rows else min(len(self), self.max_rows)
        self.cache.reserve(rows, len(row.prompt_ids) + min(row.limit, RESERVE_AHEAD))

    def cancel(self, row: Row) -> None:
        """Stop a row: it keeps what it generated and leaves before the next forward."""
        if row.finish is None:
            row.finish = "cancelled"
        if row in self.waiting:
            self.waiting.remove(row)

    def step(self) -> Iterator[tuple[Row, str]]:
        """One decode step for all running rows; see the class docstring."""
        self._leave()
        yield from self._sample()
        self._leave()
        with torch.inference_mode():
            self._decode()
            self._prefill()

    # ------------------------------------------------------------------ the parts of a step
    def _sample(self) -> Iterator[tuple[Row, str]]:
        eng = self.engine
        for r in self.running:
            if r.finish is not None:  # cancelled since the last step
                continue
            if r.limit == 0:  # echo only
                r.finish = "length"
                continue
            logits = r.logits
            if len(r.generated) < r.params.min_tokens and self._eos.numel():
                # As HF's MinNewTokensLengthLogitsProcessor: EOS cannot be chosen yet.
                logits = logits.index_fill(0, self._eos, float("-inf"))
            tid = eng._choose(logits, r)
            r.steps += 1
            if r.logprobs is not None:  # the model's own distribution, as vLLM reports
                lp = torch.log_softmax(r.logits, -1)
                r.logprobs.append(eng.token_logprob(lp, tid, r.params.logprobs))
            if tid in eng.eos_ids and not r.params.ignore_eos:
                r.finish = "stop"
                continue
            r.generated.append(tid)
            r.next_token = tid
            if r.params.repetition_penalty != 1.0:
                r.seen = torch.unique(torch.cat([r.seen, torch.tensor([tid])]))
            # Yielded every step, even with no new text, so a caller's on_token sees each step
            # (a deadline is checked per token, not per visible piece of text).
            yield r, eng._advance(r)
            if r.finish is None and len(r.generated) >= r.limit:
                r.finish = "length"
        for r in self.running:  # flush held-back text of rows that just ended
            if r.finish in ("stop", "length") and r.emitted < len(r.text):
                delta, r.emitted = r.text[r.emitted :], len(r.text)
                yield r, delta

    def _leave(self) -> None:
        """Finished rows give up their slots: the last running row moves into each hole, and
        the prompt being prefilled in the highest slot into the hole that leaves."""
        for r in [r for r in self.filling if r.finish is not None]:  # cancelled mid-prefill
            self.filling.remove(r)
            self._fill_hole(r.slot)
            r.slot, r.echo_logits = None, []
        cache, s = self.cache, 0
        while s < len(self.running):
            if self.running[s].finish is None:
                s += 1
                continue
            gone, last = self.running[s], len(self.running) - 1
            if s != last:
                cache.move(last, s)
                self.running[s] = self.running[last]
                self.running[s].slot = s
            self.running.pop()
            gone.slot, gone.logits = None, None
            self._fill_hole(last)

    def _fill_hole(self, hole: int) -> None:
        """Slot ``hole`` was left: the prefilling row in the highest slot above it moves in, so
        the occupied slots stay ``0..len-1`` (one move, whatever the number of rows)."""
        top = max(self.filling, key=lambda r: r.slot, default=None)
        if top is not None and top.slot > hole:
            self.cache.move(top.slot, hole)
            top.slot = hole
        else:
            self.cache.clear(hole)

    def _forward(
        self,
        ids: torch.Tensor,
        pos: torch.Tensor,
        mask: torch.Tensor,
        keep: int,
        rows: list[Row],
    ):
        """One forward of ``rows`` (ids row b is rows[b]); each row with its own adapter."""
        step = self.engine._decode_forward
        # the compiled step is traced for decode forwards; a prefill of one token per row runs
        # the plain model, as every other prefill does
        decode = self.cache.mode == "decode"
        fn = step if step is not None and decode else self.engine.model
        # Only a shared base takes adapter names: the single-model forward stays as it was.
        extra = {}
        if self.engine.adapter_name is not None:
            extra["adapter_names"] = [r.adapter for r in rows]
        # a one-row decode step runs on the engine's decode_threads() (see DECODE_THREADS); the
        # compiled step's one-row graph is then also compiled for that many (inductor fixes its
        # count at compile)
        with _threads(self.engine.decode_threads() if decode and len(rows) == 1 else 0):
            out = fn(
                input_ids=ids,
                attention_mask=mask,
                position_ids=pos,
                past_key_values=self.cache,
                use_cache=True,
                logits_to_keep=keep,
                **extra,
            )
        self.cache.advance()
        return out.logits

    def _decode(self) -> None:
        n = len(self.running)
        if n == 0:
            return
        ids = torch.tensor([r.next_token for r in self.running], dtype=torch.long)[:, None]
        pos, mask = self.cache.plan_decode(n, self.dtype)
        logits = self._forward(ids, pos, mask, 1, self.running)[:, -1, :].float()
        for b, r in enumerate(self.running):
            r.logits = logits[b]

    def _prefill(self) -> None:
        """Prefill waiting prompts, several rows in one forward, ``chunk`` prompt tokens at most.

        Rows are taken oldest first: those already prefilling, then waiting rows as slots allow
        (each starts from its cached prefix, if any). A row's piece of this step ends at the
        next multiple of ``chunk`` (or its prompt's end), so its pieces are the same whatever
        shares the batch; a row whose piece would overrun the step's budget waits for the next
        step (the first row always goes: a piece is at most ``chunk``).
        """
        plan: list[tuple[Row, int, int]] = []
        used = 0
        i = 0
        while True:
            if i == len(self.filling) and not self._take_waiting():
                break
            r = self.filling[i]
            a = r.fed
            # chunks end at multiples of self.chunk also after a cached prefix, so the rest of
            # the prompt is computed in the same pieces as without one
            b = min(len(r.prompt_ids), (a // self.chunk + 1) * self.chunk)
            if plan and used + (b - a) > self.chunk:
                break
            plan.append((r, a, b))
            used += b - a
            i += 1
            if used >= self.chunk:
                break
        if not plan:
            return
        # in slot order: the rows' slots are then usually a run, which attention reads as a view
        plan.sort(key=lambda p: p[0].slot)
        rows = [r for r, _, _ in plan]
        qs = [b - a for _, a, b in plan]
        q = max(qs)
        pos, mask = self.cache.plan_prefill([r.slot for r in rows], qs, self.dtype)
        # left padding (see SlotCache.plan_prefill): the pad id is never attended to
        ids = torch.tensor([[0] * (q - (b - a)) + r.prompt_ids[a:b] for r, a, b in plan])
        echo = any(r.params.echo for r in rows)
        logits = self._forward(ids, pos, mask, 0 if echo else 1, rows)
        for k, (r, a, b) in enumerate(plan):
            r.fed = b
            if r.params.echo:
                r.echo_logits.append(logits[k, q - (b - a) :].float())
            if b < len(r.prompt_ids):
                continue
            r.logits = logits[k, -1].float()
            self._store_prefix(r)
            if r.params.echo:
                full = torch.cat(r.echo_logits) if len(r.echo_logits) > 1 else r.echo_logits[0]
                r.prompt_logprobs = self.engine.score_sequence(
                    full, r.prompt_ids, r.params.logprobs or 0
                )
                r.echo_logits = []
            self._start_running(r)

    def _take_waiting(self) -> bool:
        """The oldest waiting row takes the next free slot (False: none waits, or no slot)."""
        if not self.waiting or (self.max_rows and len(self) - len(self.waiting) >= self.max_rows):
            return False
        r = self.waiting.popleft()
        r.slot, r.fed = len(self.running) + len(self.filling), 0
        self.cache.reserve(r.slot + 1, len(r.prompt_ids) + min(r.limit, RESERVE_AHEAD))
        self.cache.clear(r.slot)
        self._start_from_prefix(r)
        self.filling.append(r)
        return True

    def _start_running(self, r: Row) -> None:
        """Row r's prompt is prefilled: it joins the running rows, in slot ``len(running)``
        (the prefilling row there, if another, swaps slots with it)."""
        self.filling.remove(r)
        s = len(self.running)
        if r.slot != s:
            other = next(f for f in self.filling if f.slot == s)
            self.cache.swap(s, r.slot)
            other.slot, r.slot = r.slot, s
        self.running.append(r)

    # ------------------------------------------------------------------ prefix cache
    def _prefix_key(self, r: Row) -> str:
        """What decides a prompt's keys and values besides its tokens: the identity of the model
        the row runs, its adapter included (rows of several adapters share a batch on one base).
        """
        return (r.owner or self.engine).model_hash

    def _start_from_prefix(self, r: Row) -> None:
        """Row r (in an empty slot) starts from the longest cached prefix of its prompt, if any.

        An echo row scores every prompt token, which needs the logits of each: it prefills all.
        """
        pc = self.engine.prefix_cache
        if pc is None or not pc.enabled or r.params.echo:
            return
        p, kv = pc.lookup(self._prefix_key(r), r.prompt_ids)
        if p:
            self.cache.write_prefix(r.slot, kv)
            r.fed = p

    def _store_prefix(self, r: Row) -> None:
        """Row r's prompt is prefilled: store its full blocks not cached yet."""
        pc = self.engine.prefix_cache
        if pc is None or not pc.enabled:
            return
        slot = r.slot
        pc.store(self._prefix_key(r), r.prompt_ids, lambda a, b: self.cache.read(slot, a, b))
