"""``oficina generate`` and ``oficina chat``: text from any model spec, streamed to the terminal.

    oficina generate smollm2-135m-instruct --prompt "What is the capital of France?" --temperature 0
    oficina generate smollm2-135m-instruct --no-chat --template examples/fewshot/fruit.yaml \\
        --examples examples/fewshot/fruit.jsonl --shots 2 --prompt lemon --stop '\\n'
    echo "Hello" | oficina chat smollm2-135m-instruct

stdout holds only the generated text (or one JSON object with ``--json``); the numbers —
prompt and completion tokens, tokens/s, wall time — go to stderr, so the text can be piped.
The chat template is used when the model has one, unless ``--no-chat`` or a few-shot template
is given (few-shot prompts are plain continuations, as in the seed's ``lemon:`` example).
"""

from __future__ import annotations

import json
import sys
import time
from typing import Literal

from pydantic import Field

from oficina.config import VerbConfig
from oficina.errors import UserError
from oficina.measure import param_counts, start_span


def unescape(s: str) -> str:
    r"""Shell-typed escapes in stop strings: '\n' -> newline, '\t' -> tab, '\\' -> backslash."""
    out, i = [], 0
    table = {"n": "\n", "t": "\t", "\\": "\\", "r": "\r"}
    while i < len(s):
        if s[i] == "\\" and i + 1 < len(s) and s[i + 1] in table:
            out.append(table[s[i + 1]])
            i += 2
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


class _Sampling(VerbConfig):
    max_new_tokens: int = Field(
        128, ge=0, description="most tokens to generate (bounded by the context)"
    )
    temperature: float = Field(0.0, ge=0, description="0 = greedy; higher = more random")
    top_k: int = Field(0, ge=0, description="sample among the k most likely tokens (0 = off)")
    top_p: float = Field(
        1.0, gt=0, le=1, description="nucleus sampling: smallest set with this probability"
    )
    repetition_penalty: float = Field(1.0, gt=0, description="> 1 discourages repeating tokens")
    stop: list[str] = Field(
        default_factory=list, description="stop strings (cut from the text); '\\n' is a newline"
    )
    seed: int | None = Field(None, description="random seed: the same seed gives the same text")
    dtype: Literal["float32", "bfloat16"] = Field("float32", description="weights dtype")
    adapter: str | None = Field(None, description="a PEFT LoRA adapter directory to apply")

    def sampling(self):
        from oficina.infer.engine import SamplingParams

        return SamplingParams(
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            repetition_penalty=self.repetition_penalty,
            stop=[unescape(s) for s in self.stop],
            seed=self.seed,
        )


class GenerateConfig(_Sampling):
    """Generate text from a prompt: zero-, one- or few-shot, streamed to the terminal."""

    positionals = ("model",)
    model: str = Field(description="model spec: packaged name, preset, HF dir, .gguf or hub id")
    prompt: str = Field(description="the prompt (with --template: the query's input field)")
    chat: bool | None = Field(
        None,
        description="wrap the prompt in the model's chat template (default: yes when the model "
        "has one and no --template is given)",
    )
    system: str | None = Field(None, description="system message (chat template only)")
    template: str | None = Field(
        None,
        description="few-shot template file (.txt format string, or .yaml with template/example_sep)",
    )
    examples: str | None = Field(None, description="JSONL pool of examples for few-shot prompting")
    shots: int = Field(2, ge=0, description="number of examples (0 = zero-shot, 1 = one-shot)")
    strategy: Literal["fixed", "random", "similar"] = Field(
        "fixed",
        description="how examples are picked: the first k, seeded random, or nearest by embeddings",
    )
    token_budget: int | None = Field(
        None, ge=1, description="most prompt tokens the examples may take"
    )
    json_: bool = Field(
        False, alias="json", description="print one JSON object instead of streaming"
    )


class ChatConfig(_Sampling):
    """Chat with a model in the terminal: one line per message; /reset clears, /exit quits."""

    positionals = ("model",)
    model: str = Field(description="model spec")
    system: str | None = Field(None, description="system message")
    max_new_tokens: int = Field(256, ge=1, description="most tokens per reply")
    temperature: float = Field(0.7, ge=0, description="0 = greedy; higher = more random")
    top_p: float = Field(0.9, gt=0, le=1, description="nucleus sampling")


def build_prompt(cfg: GenerateConfig, engine) -> tuple[str, dict]:
    """The exact text sent to the model, and what went into it (for the run record)."""
    from oficina.infer.prompting import (
        fields_of,
        load_examples,
        load_template,
        render_fewshot,
        select_examples,
    )

    info: dict = {"shots": 0}
    text = cfg.prompt
    if cfg.examples and not cfg.template:
        raise UserError("--examples needs --template (how to render each example)")
    if cfg.template:
        spec = load_template(cfg.template)
        names = fields_of(spec["template"])
        if not names:
            raise UserError(f"template {cfg.template} has no {{field}} for the prompt")
        pool = load_examples(cfg.examples) if cfg.examples else []
        shots = select_examples(
            pool,
            cfg.prompt,
            cfg.shots if pool else 0,
            cfg.strategy,
            seed=cfg.seed or 0,
            token_budget=cfg.token_budget,
            count_tokens=engine.count_tokens,
            key=names[0],
        )
        text = render_fewshot(
            spec["template"],
            shots,
            {names[0]: cfg.prompt},
            example_sep=spec.get("example_sep", "\n\n"),
            answer_key=spec.get("answer_key"),
            instruction=spec.get("instruction", ""),
        )
        info = {
            "shots": len(shots),
            "strategy": cfg.strategy,
            "examples": [s.get(names[0]) for s in shots],
        }
    use_chat = cfg.chat if cfg.chat is not None else (engine.has_chat_template and not cfg.template)
    if use_chat:
        msgs = ([{"role": "system", "content": cfg.system}] if cfg.system else []) + [
            {"role": "user", "content": text}
        ]
        text = engine.render_chat(msgs)
    elif cfg.system:
        raise UserError("--system needs the chat template (drop --no-chat)")
    info["chat_template"] = bool(use_chat)
    return text, info


def run(cfg: GenerateConfig) -> int:
    from oficina.infer.engine import Engine
    from oficina.workspace import atomic_write_text, start_run

    mem = start_span()
    with start_run("generate", cfg) as rec:
        t_load = time.perf_counter()
        engine = Engine.from_spec(cfg.model, dtype=cfg.dtype, adapter=cfg.adapter)
        load_s = time.perf_counter() - t_load
        rec.add_input("model", engine.path or cfg.model)
        if cfg.adapter:
            rec.add_input("adapter", cfg.adapter)
        for name in ("template", "examples"):
            if getattr(cfg, name):
                rec.add_input(name, getattr(cfg, name))
        prompt, info = build_prompt(cfg, engine)
        params = cfg.sampling()
        first: list[float] = []

        def show(_: int, delta: str) -> None:
            if not first:
                first.append(time.perf_counter())
            sys.stdout.write(delta)
            sys.stdout.flush()

        t0 = time.perf_counter()
        c = engine.generate([prompt], params, on_token=None if cfg.json_ else show)[0]
        wall = time.perf_counter() - t0
        tps = c.completion_tokens / wall if wall > 0 else 0.0
        stats = {
            "prompt_tokens": c.prompt_tokens,
            "completion_tokens": c.completion_tokens,
            "tokens_per_s": round(tps, 2),
            "time_to_first_token_s": round(first[0] - t0, 3) if first else None,
            "wall_time_s": round(wall, 3),
            "load_time_s": round(load_s, 3),
            "finish_reason": c.finish_reason,
            "parameters": param_counts(engine.model)[0],
            "peak_memory_mb": round(mem.stop().peak_mb, 1),
            **info,
        }
        rec.summary.update(stats)
        rec.log(stats)
        atomic_write_text(rec.dir / "prompt.txt", prompt)
        atomic_write_text(rec.dir / "output.txt", c.text)
        rec.add_output("text", rec.dir / "output.txt")
        if cfg.json_:
            print(
                json.dumps(
                    {
                        "model": engine.name,
                        "model_hash": engine.model_hash,
                        "prompt": prompt,
                        "text": c.text,
                        **stats,
                        "run": rec.id,
                    },
                    ensure_ascii=False,
                )
            )
        else:
            sys.stdout.write("\n")
            sys.stdout.flush()
            print(
                f"[{c.prompt_tokens} prompt + {c.completion_tokens} completion tokens, "
                f"{tps:.1f} tokens/s, {wall:.2f}s, finish: {c.finish_reason}, "
                f"{info['shots']}-shot{', chat template' if info['chat_template'] else ''}, run {rec.id}]",
                file=sys.stderr,
            )
    return 0


def chat(cfg: ChatConfig) -> int:
    """A read-eval-print loop over stdin; works with a pipe (one message per line)."""
    from oficina.infer.engine import ContextLengthError, Engine
    from oficina.workspace import start_run

    mem = start_span()
    with start_run("chat", cfg) as rec:
        engine = Engine.from_spec(cfg.model, dtype=cfg.dtype, adapter=cfg.adapter)
        rec.add_input("model", engine.path or cfg.model)
        params = cfg.sampling()
        templated = engine.has_chat_template
        if not templated:  # a base model: a plain transcript, stopped at the next user turn
            params.stop = [*params.stop, "\nUser:"]
        interactive = sys.stdin.isatty()
        history: list[dict] = [{"role": "system", "content": cfg.system}] if cfg.system else []
        turns, total_tokens, total_time = 0, 0, 0.0
        if interactive:
            print(
                f"chatting with {engine.name} — /reset clears the history, /exit quits",
                file=sys.stderr,
            )
        while True:
            if interactive:
                print("you> ", end="", file=sys.stderr, flush=True)
            line = sys.stdin.readline()
            if not line:
                break
            msg = line.rstrip("\n")
            if not msg.strip():
                continue
            if msg.strip() == "/exit":
                break
            if msg.strip() == "/reset":
                history = history[:1] if cfg.system else []
                print("(history cleared)", file=sys.stderr)
                continue
            history.append({"role": "user", "content": msg})
            while True:  # drop the oldest turns until the conversation fits the context
                prompt = _render(engine, history, templated)
                if (
                    engine.count_tokens(prompt) + min(params.max_new_tokens, 16)
                    < engine.context_length
                ):
                    break
                first_user = 1 if cfg.system else 0
                if len(history) - first_user <= 1:
                    raise ContextLengthError("this message alone does not fit the model's context")
                del history[first_user : first_user + 2]
            t0 = time.perf_counter()
            c = engine.generate(
                [prompt], params, on_token=lambda _, d: print(d, end="", flush=True)
            )[0]
            dt = time.perf_counter() - t0
            print(flush=True)
            history.append({"role": "assistant", "content": c.text.strip()})
            turns += 1
            total_tokens += c.completion_tokens
            total_time += dt
            rec.log(
                {
                    "turn": turns,
                    "completion_tokens": c.completion_tokens,
                    "tokens_per_s": c.completion_tokens / dt,
                }
            )
            print(
                f"[{c.completion_tokens} tokens, {c.completion_tokens / dt:.1f} tokens/s]",
                file=sys.stderr,
            )
        rec.summary.update(
            turns=turns,
            completion_tokens=total_tokens,
            tokens_per_s=round(total_tokens / total_time, 2) if total_time else 0.0,
            parameters=param_counts(engine.model)[0],
            peak_memory_mb=round(mem.stop().peak_mb, 1),
        )
    return 0


def _render(engine, history: list[dict], templated: bool) -> str:
    if templated:
        return engine.render_chat(history)
    names = {"system": "System", "user": "User", "assistant": "Assistant"}
    return "".join(f"{names[m['role']]}: {m['content']}\n" for m in history) + "Assistant:"
