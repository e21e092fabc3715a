"""A user's one labelled file -> the ladder's task: its kind, labels, splits and prompt template.

    oficina ladder --data tickets.jsonl --out out/tickets          # rows {"text": ..., "label": ...}
    oficina ladder --data t.jsonl --text-field body --label-field team --out out/t

The kind comes from the fields (``text`` + ``label``: classification; ``question`` + ``answer``:
generation). Labels are collected, exact duplicate rows dropped, and the rows split (per label
for classification: stratified; seeded) into ``DIR/data/{train,validation,test}.jsonl`` beside a
``task.json``; a rerun on the same file with the same settings reuses those splits, so its
numbers compare with the first run's. Rows are written as ``{"id", "text", "label"}`` or
``{"id", "text", "answer"}`` (``text``: the question; ``id``: the row's line number in the file).

Anything that makes the file unusable stops here with one line naming it (exit 2).
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from pathlib import Path

from oficina.errors import UserError
from oficina.jsonl import read_jsonl
from oficina.workspace import atomic_write_json, atomic_write_text

MIN_EXAMPLES = 20  # below this no split can say anything about quality
MIN_PER_LABEL = 3  # one example of each label in each of the three splits
TEST_FRACTION, VALIDATION_FRACTION = 0.2, 0.1

# The prompt a rung puts before each label when the user gives none; {choices} is filled with
# the labels once, {text} with each row.
DEFAULT_TEMPLATES = {
    "classification": "Text: {text}\nQuestion: Which of these labels fits the text: {choices}?\nAnswer:",
    "generation": "Answer the question in a few words.\nQuestion: {text}\nAnswer:",
}


def _bad(msg: str) -> UserError:
    return UserError(msg, exit_code=2)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


FIELDS = {"classification": ("text", "label"), "generation": ("question", "answer")}


def read_labelled(
    path: Path, text_field: str | None, label_field: str | None, kind: str = "auto"
) -> tuple[str, list[dict], int]:
    """The task's kind, the file's rows as ``{"id", "text", "label" | "answer"}`` without exact
    duplicates, and how many duplicates were dropped. Raises a one-line UserError for a file
    the ladder cannot use.

    ``kind`` "auto": fields named by the caller, or ``text`` + ``label``, make a classification
    task; ``question`` + ``answer`` a generation task. The fields default to the kind's."""
    rows, bad = read_jsonl(path, "data file")
    if bad or not rows:
        raise _bad(
            f"{path} is not JSONL: {bad} of {bad + len(rows)} lines are not JSON objects "
            "(one JSON object per line)"
            if bad
            else f"{path} holds no rows"
        )
    first = rows[0]
    if kind == "auto":
        named = text_field is not None or label_field is not None
        qa = all(f in first for f in FIELDS["generation"])
        kind = "generation" if qa and not named else "classification"
    text_field = text_field or FIELDS[kind][0]
    label_field = label_field or FIELDS[kind][1]
    out_field = "label" if kind == "classification" else "answer"
    if text_field not in first and label_field not in first:
        raise _bad(
            f"{path} has no '{text_field}' and '{label_field}' fields (its fields: "
            f"{', '.join(sorted(first))}); name them with --text-field and --label-field, "
            "or give 'question' and 'answer' for a generation task"
        )
    out, seen, dropped = [], {}, 0
    for n, row in enumerate(rows, 1):
        for field in (text_field, label_field):
            value = row.get(field)
            if value is None:
                raise _bad(f"row {n} of {path} has no '{field}'")
            if isinstance(value, (dict, list)) or not str(value).strip():
                raise _bad(f"row {n} of {path} has an empty or non-text '{field}': {value!r}")
        text, label = str(row[text_field]), str(row[label_field])
        if text in seen:
            if seen[text][1] != label:
                raise _bad(
                    f"rows {seen[text][0]} and {n} of {path} have the same {text_field} with "
                    f"{label_field}s '{seen[text][1]}' and '{label}': keep one"
                )
            dropped += 1
            continue
        seen[text] = (n, label)
        out.append({"id": n, "text": text, out_field: label})
    return kind, out, dropped


def check_counts(rows: list[dict], path: Path, kind: str = "classification") -> list[str]:
    """The labels (sorted; none for generation), after checking there is enough data to split
    and measure."""
    if len(rows) < MIN_EXAMPLES:
        raise _bad(
            f"{path} has {len(rows)} distinct examples: the ladder needs at least {MIN_EXAMPLES}"
        )
    if kind == "generation":
        return []
    counts = Counter(r["label"] for r in rows)
    if len(counts) < 2:
        raise _bad(
            f"{path} has one label ('{next(iter(counts))}'): classification needs two or more"
        )
    once = sorted(lab for lab, k in counts.items() if k == 1)
    if once:
        raise _bad(
            f"label '{once[0]}' appears once in {path}: every label needs at least "
            f"{MIN_PER_LABEL} examples (one per split); add examples or remove it"
        )
    few = sorted(lab for lab, k in counts.items() if k < MIN_PER_LABEL)
    if few:
        raise _bad(
            f"label '{few[0]}' has only {counts[few[0]]} examples in {path}: every label needs at "
            f"least {MIN_PER_LABEL} (one per split)"
        )
    return sorted(counts)


def stratified_split(
    rows: list[dict],
    seed: int,
    test_fraction: float = TEST_FRACTION,
    validation_fraction: float = VALIDATION_FRACTION,
) -> dict[str, list[dict]]:
    """Per label (rows without one are one group): shuffle (seeded), then ``test_fraction``
    test, ``validation_fraction`` validation (at least one each), the rest training; each split
    is shuffled so its labels interleave."""
    rng = random.Random(seed)
    by_label: dict[str, list[dict]] = {}
    for r in rows:
        by_label.setdefault(r.get("label", ""), []).append(r)
    splits: dict[str, list[dict]] = {"train": [], "validation": [], "test": []}
    for label in sorted(by_label):
        items = list(by_label[label])
        rng.shuffle(items)
        n_test = max(1, round(len(items) * test_fraction))
        n_val = max(1, round(len(items) * validation_fraction))
        splits["test"] += items[:n_test]
        splits["validation"] += items[n_test : n_test + n_val]
        splits["train"] += items[n_test + n_val :]
    for part in splits.values():
        rng.shuffle(part)
    return splits


def sample_rows(rows: list[dict], n: int | None, seed: int, key: str = "label") -> list[dict]:
    """``n`` of ``rows`` drawn without replacement (seeded), in their file order: per ``key``
    value in proportion to its share (largest remainder; every value keeps one row while ``n``
    allows), so a limit on a file sorted by topic is not its first topics. Rows without ``key``
    (a generation task) are one group: a plain seeded sample. ``n`` None or ≥ len: all rows."""
    if n is None or n >= len(rows):
        return rows
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault(str(r.get(key, "")), []).append(i)
    share = {g: n * len(ix) / len(rows) for g, ix in groups.items()}
    take = {g: int(q) for g, q in share.items()}
    for g in sorted(groups, key=lambda g: (take[g] - share[g], g))[: n - sum(take.values())]:
        take[g] += 1
    if n >= len(groups):
        for g in (g for g in sorted(groups) if take[g] == 0):
            take[g] = 1
            take[max(take, key=lambda h: (take[h], h))] -= 1
    rng = random.Random(seed)
    chosen = sorted(i for g in sorted(groups) for i in rng.sample(groups[g], take[g]))
    return [rows[i] for i in chosen]


def prepare_task(
    data: str | Path,
    out_dir: str | Path,
    *,
    text_field: str | None = None,
    label_field: str | None = None,
    kind: str = "auto",
    seed: int = 0,
    test_fraction: float = TEST_FRACTION,
    validation_fraction: float = VALIDATION_FRACTION,
) -> Path:
    """Split ``data`` into ``out_dir`` (or reuse the splits there) and return its task.json."""
    path, out_dir = Path(data), Path(out_dir)
    if not path.is_file():
        raise _bad(f"data file not found: {path}")
    source = {
        "path": str(path.resolve()),
        "sha256": _sha256(path),
        "text_field": text_field,
        "label_field": label_field,
        "kind": kind,
        "seed": seed,
        "test_fraction": test_fraction,
        "validation_fraction": validation_fraction,
    }
    task_path = out_dir / "task.json"
    if task_path.is_file():
        old = json.loads(task_path.read_text()).get("source", {})
        # Splits written before the fractions were settings were made with the defaults.
        was = {"test_fraction": TEST_FRACTION, "validation_fraction": VALIDATION_FRACTION, **old}
        differ = [k for k in source if k != "path" and was.get(k) != source[k]]
        if not differ:
            return task_path  # the same file and settings: the same splits
        raise _bad(
            f"{out_dir} holds splits made with another {', '.join(differ)} "
            f"(from {old.get('path')}): use another --out or delete {out_dir}"
        )
    kind, rows, dropped = read_labelled(path, text_field, label_field, kind)
    labels = check_counts(rows, path, kind)
    splits = stratified_split(rows, seed, test_fraction, validation_fraction)
    untrained = sorted(set(labels) - {r.get("label") for r in splits["train"]})
    if not splits["train"] or untrained:
        what = f"of '{untrained[0]}' " if untrained else ""
        raise _bad(
            f"{path}: after the test ({test_fraction}) and validation ({validation_fraction}) "
            f"shares no example {what}is left to train on: lower the shares or add examples"
        )
    for name, part in splits.items():
        atomic_write_text(
            out_dir / f"{name}.jsonl",
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in part),
        )
    template = DEFAULT_TEMPLATES[kind].replace("{choices}", ", ".join(labels))
    # Written last: its presence says the splits beside it are complete.
    atomic_write_json(
        task_path,
        {
            "name": path.stem,
            "type": kind,
            **({"labels": labels} if kind == "classification" else {}),
            "template": template,
            "text_field": "text",
            "label_field" if kind == "classification" else "answer_field": (
                "label" if kind == "classification" else "answer"
            ),
            "source": source,
            "rows": len(rows),
            "duplicates_removed": dropped,
            "sizes": {k: len(v) for k, v in splits.items()},
            **(
                {
                    "label_counts": {
                        k: dict(Counter(r["label"] for r in v)) for k, v in splits.items()
                    }
                }
                if kind == "classification"
                else {}
            ),
        },
    )
    return task_path
