"""Planted corpora for the data tests: prose in two languages, duplicates of known Jaccard."""

from __future__ import annotations

import random

from helpers import write_jsonl  # noqa: F401  (re-exported for the data tests)

EN = (
    "The river runs through the old town and the people who live near it have learned to "
    "read its moods. In spring the water rises after the snow melts in the hills, and in the "
    "summer it becomes slow and warm. Children learn to swim there, and the fishermen know "
    "which stones hide the best places. The council has built a new bridge this year, which "
    "makes the walk to the market much shorter for the families on the other side."
)
PT = (
    "O rio atravessa a cidade velha e as pessoas que moram perto dele aprenderam a ler o seu "
    "humor. Na primavera a água sobe depois que a neve derrete nas colinas, e no verão ela fica "
    "lenta e morna. As crianças aprendem a nadar ali, e os pescadores sabem quais pedras "
    "escondem os melhores lugares. A prefeitura construiu uma ponte nova este ano, o que torna "
    "a caminhada até o mercado muito mais curta para as famílias do outro lado."
)


def synthetic_vocab(n: int = 20000, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab: set[str] = set()
    while len(vocab) < n:
        vocab.add("".join(rng.choice(letters) for _ in range(rng.randint(3, 9))))
    return sorted(vocab)


def mutate(rng: random.Random, words: list[str], vocab: list[str], k: int) -> list[str]:
    """k random word substitutions."""
    out = list(words)
    for i in rng.sample(range(len(out)), k):
        out[i] = rng.choice(vocab)
    return out


def prose_corpus(n: int, seed: int = 0, dup_every: int = 0) -> list[dict]:
    """n clean prose documents (EN and PT); every ``dup_every``-th one repeats an earlier one
    with a few words changed (a near duplicate) so dedup has work across shards."""
    rng = random.Random(seed)
    vocab = synthetic_vocab(5000, seed)
    rows: list[dict] = []
    for i in range(n):
        if dup_every and i and i % dup_every == 0:
            src = rows[rng.randrange(len(rows))]["text"].split(" ")
            rows.append({"id": f"doc-{i}", "text": " ".join(mutate(rng, src, vocab, 1))})
            continue
        base = EN if i % 2 == 0 else PT
        tail = " ".join(rng.choice(vocab) for _ in range(60))
        rows.append({"id": f"doc-{i}", "text": f"{base}\n\n{tail}."})
    return rows
