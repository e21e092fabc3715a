"""In-context learning on the demo task: zero-shot vs few-shot (random) vs few-shot (similar).

The task: which of five parts of the Python reference a passage comes from
(``examples/demo/task``, template ``oficina.demo_domain.TEMPLATE``). Each strategy scores the
same test rows with SmolLM2-135M-Instruct by the log-likelihood of each label after the prompt
(``oficina.evals.tasks.classify``); the examples come from the train split through
``oficina.infer.prompting.select_examples``:
  * zero-shot — the template alone;
  * random    — k training examples drawn at random (seeded by the row, so reruns agree);
  * similar   — the k training examples nearest the test passage by MiniLM embedding.
Prompt tokens are reported next to accuracy: examples are paid for on every request.

    .venv/bin/python benchmarks/icl.py            # all 96 test rows, k=3
    .venv/bin/python benchmarks/icl.py --quick    # the first 40 test rows
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import zlib
from pathlib import Path

from _machine import machine  # noqa: E402

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]


class CachedEmbedder:
    """Embeds each distinct text once (select_examples re-embeds the pool on every query)."""

    def __init__(self, inner):
        self.inner, self.cache = inner, {}
        self.name, self.dim = inner.name, inner.dim

    def encode(self, texts, normalize: bool = True):
        import numpy as np

        missing = [t for t in dict.fromkeys(texts) if t not in self.cache]
        if missing:
            for t, v in zip(missing, self.inner.encode(missing), strict=True):
                self.cache[t] = v
        return np.stack([self.cache[t] for t in texts])


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="first 40 test rows")
    ap.add_argument("--k", type=int, default=3, help="examples per prompt")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()

    from oficina.demo_domain import LABELS, TEMPLATE
    from oficina.evals.tasks import classify
    from oficina.infer.engine import Engine
    from oficina.infer.prompting import select_examples
    from oficina.models.embed import Embedder

    task = ROOT / "examples/demo/task"
    train = [json.loads(x) for x in (task / "train.jsonl").read_text().splitlines() if x.strip()]
    test = [json.loads(x) for x in (task / "test.jsonl").read_text().splitlines() if x.strip()]
    if args.quick:
        test = test[:40]
    print(f"machine: {machine()}")
    print(
        f"task: {len(test)} test rows, {len(train)} train examples, k={args.k}, model {args.model}"
    )
    engine = Engine.from_spec(args.model)
    embedder = CachedEmbedder(Embedder("minilm-l6"))

    def seed_of(row: dict) -> int:
        return zlib.crc32(row["id"].encode())

    strategies = {
        "zero-shot": None,
        f"{args.k}-shot random": lambda row: select_examples(
            train, row["text"], args.k, "random", seed=seed_of(row)
        ),
        f"{args.k}-shot similar": lambda row: select_examples(
            train, row["text"], args.k, "similar", embedder=embedder, key="text"
        ),
    }
    results = {}
    for name, fewshot in strategies.items():
        t0 = time.perf_counter()
        res = classify(engine, test, LABELS, TEMPLATE, fewshot, batch_size=4)
        wall = time.perf_counter() - t0
        results[name] = {
            "accuracy": res["accuracy"],
            "ci": res["ci"]["accuracy"],
            "macro_f1": res["macro_f1"],
            "prompt_tokens_mean": res["prompt_tokens"]["mean"],
            "wall_s": round(wall, 1),
            "per_item": res["per_item"],
            "predictions": res["predictions"],
        }
        print(f"  {name}: accuracy {res['accuracy']:.3f} ({wall:.0f}s)", flush=True)

    base = results["zero-shot"]["accuracy"]
    print()
    print(
        f"{'strategy':<18} {'accuracy':>8} {'95% CI':>15} {'macro F1':>8} {'prompt tok':>10} {'vs zero-shot':>12} {'wall s':>7}"
    )
    for name, r in results.items():
        lo, hi = r["ci"]
        ratio = r["accuracy"] / base if base else float("nan")
        print(
            f"{name:<18} {r['accuracy']:>8.3f} {f'[{lo:.3f}, {hi:.3f}]':>15} {r['macro_f1']:>8.3f} "
            f"{r['prompt_tokens_mean']:>10.0f} {ratio:>11.2f}x {r['wall_s']:>7.1f}"
        )
    majority = max(LABELS, key=lambda lab: sum(r["label"] == lab for r in test))
    maj_acc = sum(r["label"] == majority for r in test) / len(test)
    print(f"(majority class '{majority}': {maj_acc:.3f}; chance 0.200)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
