"""The bundled demo domain: the Python language reference, from ``pydoc_data.topics``.

Every Python install carries the reference as 79 topics (~465k characters). This module turns
them into
  * ``reference.jsonl`` — one document per topic (id, title, text, source, licence);
  * a labelled task, "which part of the reference is this passage from?", with five classes,
    as ``task/{train,validation,test}.jsonl`` plus ``task/task.json`` (labels, instruction and
    the prompt template every rung of the ladder shares).

Splits are fixed by a hash of the passage text, so they never change between runs and no
passage is in two splits (exact duplicates are dropped first).

    python -m oficina.demo_domain examples/demo      # rebuild (deterministic)
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path

from oficina.workspace import atomic_write_text

# Five coarse sections of the reference; each topic belongs to one. 'debugger' (pdb's manual)
# is left out of the task: it is not language reference, and would be a trivially easy class.
SECTIONS: dict[str, list[str]] = {
    "statement": [
        "compound",
        "if",
        "while",
        "for",
        "try",
        "with",
        "function",
        "class",
        "async",
        "else",
        "assignment",
        "augassign",
        "import",
        "raise",
        "return",
        "del",
        "pass",
        "break",
        "continue",
        "global",
        "nonlocal",
        "assert",
        "yield",
    ],
    "expression": [
        "binary",
        "comparisons",
        "calls",
        "subscriptions",
        "slicings",
        "lambda",
        "power",
        "unary",
        "bitwise",
        "shifting",
        "booleans",
        "operator-summary",
        "await",
        "in",
        "attribute-references",
        "exprlists",
        "conversions",
        "atom-identifiers",
        "atom-literals",
        "strings",
        "integers",
        "floating",
        "imaginary",
        "numbers",
        "lists",
        "dict",
        "identifiers",
    ],
    "data model": [
        "specialnames",
        "customization",
        "attribute-access",
        "sequence-types",
        "numeric-types",
        "objects",
        "types",
        "context-managers",
        "callable-types",
        "specialattrs",
        "id-classes",
    ],
    "built-in type": [
        "typesseq",
        "typesmapping",
        "string-methods",
        "formatstrings",
        "typesseq-mutable",
        "typesmethods",
        "typesmodules",
        "typesfunctions",
        "truth",
        "bltin-code-objects",
        "bltin-type-objects",
        "bltin-ellipsis-object",
        "bltin-null-object",
    ],
    "execution model": ["execmodel", "naming", "dynamic-features", "exceptions"],
}
LABELS = list(SECTIONS)
INSTRUCTION = (
    "Which part of the Python language reference is this passage from? "
    "Answer with one of: " + ", ".join(LABELS) + "."
)
# The one prompt template of the task. {text} is the passage; the answer follows "Answer:".
TEMPLATE = "Passage: {text}\nQuestion: " + INSTRUCTION + "\nAnswer:"
SPLITS = {"train": 0.70, "validation": 0.15, "test": 0.15}
# Passages of 150-400 characters (~90 tokens; rows of ~130 prompt tokens): 250-700 made rows of
# ~185 tokens, and make demo's ladder (training is tokens x steps) took ~40 quiet minutes.
PASSAGE_CHARS = (150, 400)


def topic_of_label() -> dict[str, str]:
    return {t: label for label, ts in SECTIONS.items() for t in ts}


def _clean(text: str) -> str:
    # The topics are reST rendered to plain text: drop the '*' bullets' padding and trailing blanks.
    lines = [ln.rstrip() for ln in text.splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def passages(text: str, lo: int = PASSAGE_CHARS[0], hi: int = PASSAGE_CHARS[1]) -> list[str]:
    """Greedy paragraph packing into passages of lo..hi characters (a long paragraph stands alone, cut at hi*2)."""
    out, cur = [], ""
    for para in (p.strip() for p in text.split("\n\n")):
        if not para:
            continue
        if len(para) > 2 * hi:
            para = para[: 2 * hi].rsplit(" ", 1)[0]
        if cur and len(cur) + len(para) + 2 > hi:
            if len(cur) >= lo:
                out.append(cur)
                cur = ""
        cur = f"{cur}\n\n{para}" if cur else para
    if len(cur) >= lo:
        out.append(cur)
    return out


def split_of(text: str) -> str:
    """Deterministic split from the passage's hash: the same text always lands in the same split."""
    x = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    acc = 0.0
    for name, frac in SPLITS.items():
        acc += frac
        if x <= acc:
            return name
    return "test"


def build(out: Path) -> dict:
    from pydoc_data.topics import topics

    out = Path(out)
    docs = [
        {
            "id": f"pyref/{name}",
            "title": name,
            "text": _clean(text),
            "source": "pydoc_data.topics",
            "license": "PSF-2.0",
            "python": sys.version.split()[0],
        }
        for name, text in sorted(topics.items())
    ]
    atomic_write_text(
        out / "reference.jsonl", "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs)
    )

    label_of = topic_of_label()
    seen: set[str] = set()
    rows: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for d in docs:
        label = label_of.get(d["title"])
        if label is None:
            continue
        for i, p in enumerate(passages(d["text"])):
            key = " ".join(p.split()).lower()
            if key in seen:
                continue
            seen.add(key)
            rows[split_of(key)].append(
                {
                    "id": f"{d['title']}#{i}",
                    "text": p,
                    "label": label,
                    "topic": d["title"],
                    "doc_id": d["id"],
                }
            )
    for split, items in rows.items():
        atomic_write_text(
            out / "task" / f"{split}.jsonl",
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in items),
        )
    task = {
        "name": "pyref-section",
        "type": "classification",
        "labels": LABELS,
        "instruction": INSTRUCTION,
        "template": TEMPLATE,
        "text_field": "text",
        "label_field": "label",
        "sizes": {s: len(v) for s, v in rows.items()},
        "label_counts": {
            s: {lab: sum(r["label"] == lab for r in v) for lab in LABELS} for s, v in rows.items()
        },
        "python": sys.version.split()[0],
    }
    atomic_write_text(out / "task" / "task.json", json.dumps(task, indent=2) + "\n")
    return task


if __name__ == "__main__":
    print(json.dumps(build(Path(sys.argv[1] if len(sys.argv) > 1 else "examples/demo")), indent=2))
