"""Zero-, one- and few-shot prompting: pick k examples from a pool and render them with a template.

The seed's example, as written:

    render_fewshot("{input}: {output}",
                   [{"input": "plum", "output": "drupe"}, {"input": "pear", "output": "pome"}],
                   {"input": "lemon"}, example_sep="\\n")
    == "plum: drupe\\npear: pome\\nlemon:"

A template is a ``str.format`` string. Its *answer field* is the last placeholder the query does
not have: examples are rendered whole, the query stops just before that placeholder (trailing
spaces dropped, so the model writes " drupe" itself). A template with no answer placeholder
(``"Passage: {text}\\nAnswer:"``) gets the example's answer appended after a space, taken from
``answer_key`` or the first of output/answer/label/completion the example has.

Example selection (``select_examples``): ``fixed`` (the first k), ``random`` (seeded), or
``similar`` (the k nearest to the query by sentence embeddings, most similar last, i.e. closest
to the question), all within an optional token budget.

    oficina generate smollm2-135m-instruct --no-chat --template examples/fewshot/fruit.yaml \\
        --examples examples/fewshot/fruit.jsonl --shots 2 --prompt lemon
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Callable
from pathlib import Path

from oficina.errors import NotFound, UserError
from oficina.models.embed import Embedder

ANSWER_KEYS = ("output", "answer", "label", "completion")
TEXT_KEYS = ("input", "text", "prompt", "question", "query")


def fields_of(template: str) -> list[str]:
    """Placeholder names of a format string, in order, without repeats."""
    try:
        names = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        raise UserError(
            f"bad template ({e}); write fields as {{name}} and literal braces as {{{{ }}}}"
        ) from None
    out: list[str] = []
    for n in names:
        if not n or not n.isidentifier():
            raise UserError(f"template field {{{n}}} must be a name like {{input}}")
        if n not in out:
            out.append(n)
    return out


def _fill(template: str, row: dict, what: str) -> str:
    try:
        return template.format(**row)
    except KeyError as e:
        raise UserError(
            f"{what} has no field {e.args[0]!r} that the template uses (has: {sorted(row)})"
        ) from None


def _answer_key(example: dict, answer_key: str | None) -> str:
    if answer_key:
        if answer_key not in example:
            raise UserError(f"example has no answer field {answer_key!r} (has: {sorted(example)})")
        return answer_key
    for k in ANSWER_KEYS:
        if k in example:
            return k
    raise UserError(
        f"example has no answer field (one of {', '.join(ANSWER_KEYS)}); has: {sorted(example)}"
    )


def render_fewshot(
    template: str,
    examples: list[dict],
    query: dict,
    example_sep: str = "\n\n",
    answer_key: str | None = None,
    instruction: str = "",
) -> str:
    """Examples rendered whole, then the query up to its answer; see the module docstring."""
    names = fields_of(template)
    missing = [n for n in names if n not in query]
    if missing:
        ans = missing[-1]
        if missing[:-1]:
            raise UserError(f"query has no field(s) {missing[:-1]} that the template uses")
        cut = template.index("{" + ans)
        query_text = _fill(template[:cut], query, "query").rstrip(" ")
        shots = [_fill(template, ex, "example") for ex in examples]
    else:
        query_text = _fill(template, query, "query")
        shots = [
            _fill(template, ex, "example") + " " + str(ex[_answer_key(ex, answer_key)]).strip()
            for ex in examples
        ]
    parts = ([instruction] if instruction else []) + shots + [query_text]
    return example_sep.join(parts)


def example_text(example: dict, key: str | None = None) -> str:
    """The part of an example that is compared with the query (its input, not its answer)."""
    if key:
        return str(example.get(key, ""))
    for k in TEXT_KEYS:
        if k in example:
            return str(example[k])
    return " ".join(
        str(v) for k, v in example.items() if k not in ANSWER_KEYS and isinstance(v, str)
    )


def _encode_memo(embedder, texts: list[str]):
    """Embeddings with a per-embedder memo: the pool is embedded once, not once per query."""
    import numpy as np

    memo: dict = embedder.__dict__.setdefault("_oficina_memo", {})
    missing = [t for t in dict.fromkeys(texts) if t not in memo]
    if missing:
        for t, v in zip(
            missing, np.asarray(embedder.encode(missing), dtype=np.float32), strict=True
        ):
            memo[t] = v
    return np.stack([memo[t] for t in texts])


def select_examples(
    pool: list[dict],
    query_text: str,
    k: int,
    strategy: str = "fixed",
    seed: int = 0,
    token_budget: int | None = None,
    count_tokens: Callable[[str], int] | None = None,
    embedder=None,
    key: str | None = None,
) -> list[dict]:
    """k examples from pool by strategy, dropping the least preferred ones over token_budget."""
    if k < 0:
        raise UserError(f"shots must be >= 0, got {k}")
    k = min(k, len(pool))
    if k == 0:
        return []
    if strategy == "fixed":
        chosen = pool[:k]
    elif strategy == "random":
        chosen = random.Random(seed).sample(pool, k)
    elif strategy == "similar":
        import numpy as np

        if embedder is None:
            embedder = Embedder()
        vecs = _encode_memo(embedder, [query_text] + [example_text(e, key) for e in pool])
        vecs = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
        sims = vecs[1:] @ vecs[0]
        best = sorted(range(len(pool)), key=lambda i: (-float(sims[i]), i))[:k]
        chosen = [pool[i] for i in reversed(best)]  # most similar last: nearest the query
    else:
        raise UserError(f"unknown strategy '{strategy}'; choose fixed, random or similar")
    if token_budget is not None:
        if count_tokens is None:
            raise UserError("a token budget needs a token counter")
        # Least preferred first: for "similar" that is the front of the list, else the back.
        order = list(range(len(chosen)))
        drop_from_front = strategy == "similar"
        cost = [count_tokens(json.dumps(e, ensure_ascii=False)) for e in chosen]
        while order and sum(cost[i] for i in order) > token_budget:
            order.pop(0 if drop_from_front else -1)
        chosen = [chosen[i] for i in order]
    return chosen


def load_template(path: str | Path) -> dict:
    """A template file: plain text (the template itself) or YAML with template/example_sep/
    instruction/answer_key."""
    p = Path(path)
    if not p.is_file():
        raise NotFound(f"template file not found: {p}")
    text = p.read_text(encoding="utf-8")
    if p.suffix in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text) or {}
        if not isinstance(data, dict) or not isinstance(data.get("template"), str):
            raise UserError(f"{p}: a YAML template needs a 'template' text field")
        allowed = {"template", "example_sep", "instruction", "answer_key"}
        extra = set(data) - allowed
        if extra:
            raise UserError(f"{p}: unknown key(s) {sorted(extra)}; allowed: {sorted(allowed)}")
        return data
    return {"template": text.rstrip("\n")}


def load_examples(path: str | Path) -> list[dict]:
    """A JSONL pool of examples (objects); a malformed line is an error naming the line."""
    p = Path(path)
    if not p.is_file():
        raise NotFound(f"examples file not found: {p}")
    rows = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise UserError(f"{p}:{n}: not valid JSON") from None
        if not isinstance(row, dict):
            raise UserError(f"{p}:{n}: each line must be a JSON object")
        rows.append(row)
    return rows
