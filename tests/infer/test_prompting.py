"""Few-shot rendering and example selection (fixed, random, similar with a fake embedder, budget)."""

from __future__ import annotations

import numpy as np
import pytest

from oficina.errors import UserError
from oficina.infer.prompting import load_examples, load_template, render_fewshot, select_examples

FRUIT = [
    {"input": "plum", "output": "drupe"},
    {"input": "pear", "output": "pome"},
    {"input": "cherry", "output": "drupe"},
    {"input": "apple", "output": "pome"},
]


def test_seed_example_renders_as_written():
    text = render_fewshot("{input}: {output}", FRUIT[:2], {"input": "lemon"}, example_sep="\n")
    assert text == "plum: drupe\npear: pome\nlemon:"
    assert render_fewshot("{input}: {output}", [], {"input": "lemon"}) == "lemon:"  # zero-shot


def test_bundled_fruit_files_give_the_seed_prompt(repo_root):
    spec = load_template(repo_root / "examples/fewshot/fruit.yaml")
    pool = load_examples(repo_root / "examples/fewshot/fruit.jsonl")
    shots = select_examples(pool, "lemon", 2, "fixed")
    assert render_fewshot(spec["template"], shots, {"input": "lemon"}, spec["example_sep"]) == (
        "plum: drupe\npear: pome\nlemon:"
    )


def test_template_without_answer_field_appends_the_answer():
    from oficina.demo_domain import TEMPLATE

    ex = [{"text": "x = 1", "label": "assignment"}]
    out = render_fewshot(TEMPLATE, ex, {"text": "del x"}, instruction="Classify.")
    parts = out.split("\n\n")
    assert parts[0] == "Classify."
    assert parts[1].startswith("Passage: x = 1\n") and parts[1].endswith("Answer: assignment")
    assert parts[2].startswith("Passage: del x\n") and parts[2].endswith("Answer:")


def test_bad_templates_and_rows_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="no field"):
        render_fewshot("{input}: {output}", [{"x": 1}], {"input": "a"})
    with pytest.raises(UserError):
        render_fewshot("{input: {output}", [], {"input": "a"})
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"input": "a"}\nnot json\n')
    with pytest.raises(UserError, match="bad.jsonl:2"):
        load_examples(bad)


def test_fixed_and_random_selection():
    assert select_examples(FRUIT, "q", 2, "fixed") == FRUIT[:2]
    assert select_examples(FRUIT, "q", 0, "fixed") == []
    assert select_examples(FRUIT, "q", 10, "fixed") == FRUIT
    a = select_examples(FRUIT, "q", 2, "random", seed=1)
    assert a == select_examples(FRUIT, "q", 2, "random", seed=1)
    picks = {
        tuple(e["input"] for e in select_examples(FRUIT, "q", 2, "random", seed=s))
        for s in range(10)
    }
    assert len(picks) > 2 and all(len(set(p)) == 2 for p in picks)
    with pytest.raises(UserError):
        select_examples(FRUIT, "q", 2, "nearest")


class FakeEmbedder:
    """Bag-of-letters vectors: words sharing letters are 'similar'."""

    def __init__(self):
        self.calls = 0

    def encode(self, texts, normalize=True):
        self.calls += 1
        out = np.zeros((len(texts), 26), dtype=np.float32)
        for i, t in enumerate(texts):
            for ch in t.lower():
                if "a" <= ch <= "z":
                    out[i, ord(ch) - 97] += 1
        return out


def test_similar_selection_puts_the_nearest_last():
    emb = FakeEmbedder()
    got = select_examples(FRUIT, "pearl", 2, "similar", embedder=emb)
    assert emb.calls == 1
    assert got[-1]["input"] == "pear"  # the nearest example sits next to the query
    assert len(got) == 2 and got[0]["input"] != "pear"


def test_token_budget_drops_least_preferred():
    count = len  # one "token" per character of the JSON row
    cost = count('{"input": "plum", "output": "drupe"}')
    got = select_examples(FRUIT, "q", 4, "fixed", token_budget=2 * cost + 1, count_tokens=count)
    assert got == FRUIT[:2]
    sim = select_examples(
        FRUIT, "pearl", 3, "similar", embedder=FakeEmbedder(), token_budget=cost, count_tokens=count
    )
    assert [e["input"] for e in sim] == ["pear"]
