"""``oficina index eval``: recall@k and MRR of BM25, dense and hybrid retrieval, side by side.

The question set is JSONL, one question per line: ``{"question": "...", "relevant": ["doc-id",
...]}`` (``relevant_doc_ids`` or ``doc_ids`` are accepted too). Scores are per *document*:
the top 2 x 10 chunks are retrieved, then collapsed to documents in rank order (a document counts at the rank
of its best chunk), so a long document is not rewarded for having many chunks.

  recall@k  fraction of a question's relevant documents among the first k, averaged
  MRR       1 / rank of the first relevant document (0 when none in the first 10), averaged

    oficina index eval workspace/indexes/demo --questions examples/demo/questions.jsonl
    oficina index eval IDX --questions q.jsonl --k 1 3 5 10 --json
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from pydantic import Field
from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from oficina.config import VerbConfig
from oficina.errors import UserError
from oficina.rag.retrieve import MODES, Index
from oficina.workspace import start_run

MRR_CUTOFF = 10


class IndexEvalConfig(VerbConfig):
    """Recall@k and MRR of the BM25, dense and hybrid retrievers on a question set."""

    positionals = ("index_dir",)
    index_dir: str = Field(description="index folder written by `oficina index`")
    questions: str = Field(description="JSONL: {question, relevant: [doc ids]} per line")
    k: list[int] = Field([1, 5, 10], description="cut-offs for recall@k")
    json_: bool = Field(False, alias="json", description="print JSON")


def read_questions(path: str | Path) -> list[dict]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"question file not found: {p}")
    rows = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            raise UserError(f"{p}:{n} is not valid JSON") from None
        rel = rec.get("relevant") or rec.get("relevant_doc_ids") or rec.get("doc_ids")
        if not isinstance(rec.get("question"), str) or not rel:
            raise UserError(f"{p}:{n} needs 'question' and a non-empty 'relevant' list")
        rows.append({"question": rec["question"], "relevant": [str(r) for r in rel]})
    if not rows:
        raise UserError(f"{p} holds no questions")
    return rows


def ranked_docs(index: Index, question: str, mode: str, n_docs: int) -> list[str]:
    """Distinct document ids in rank order (a document ranks at its best chunk)."""
    hits = index.search(question, k=n_docs * 2, mode=mode)
    out: list[str] = []
    for h in hits:
        if h.doc_id not in out:
            out.append(h.doc_id)
    return out[:n_docs]


def evaluate(index: Index, questions: list[dict], ks: list[int], progress: bool = True) -> dict:
    n_docs = max(max(ks), MRR_CUTOFF)
    results: dict[str, dict] = {}
    for mode in MODES:
        recall = {k: 0.0 for k in ks}
        rr = 0.0
        index._qcache.clear()  # each retriever pays for its own query embedding
        t0 = time.perf_counter()
        for q in tqdm(questions, desc=mode, disable=not progress, leave=False):
            docs = ranked_docs(index, q["question"], mode, n_docs)
            rel = set(q["relevant"])
            for k in ks:
                recall[k] += len(rel & set(docs[:k])) / len(rel)
            first = next((i for i, d in enumerate(docs[:MRR_CUTOFF], 1) if d in rel), None)
            rr += 1.0 / first if first else 0.0
        n = len(questions)
        results[mode] = {
            **{f"recall@{k}": round(recall[k] / n, 4) for k in ks},
            "mrr": round(rr / n, 4),
            "ms_per_query": round(1000 * (time.perf_counter() - t0) / n, 1),
        }
    return results


def run(cfg: IndexEvalConfig) -> int:
    ks = sorted(set(cfg.k))
    if not ks or ks[0] < 1:
        raise UserError("--k needs positive cut-offs")
    questions = read_questions(cfg.questions)
    with start_run("index eval", cfg) as run_:
        run_.add_input("index", Path(cfg.index_dir) / "index.json")
        run_.add_input("questions", cfg.questions)
        index = Index.open(cfg.index_dir)
        index.embed_query("warm-up")  # load the encoder before timing
        results = evaluate(index, questions, ks, progress=not cfg.json_)
        index.close()
        for mode, row in results.items():
            run_.log({"mode": mode, **row})
            for key, v in row.items():
                run_.summary[f"{mode}.{key}"] = v
        best_single = (
            max(results["bm25"]["recall@5"], results["dense"]["recall@5"]) if 5 in ks else None
        )
        run_.summary["questions"] = len(questions)
    if cfg.json_:
        print(json.dumps({"questions": len(questions), "results": results}, indent=2))
        return 0
    t = Table(title=f"retrieval on {len(questions)} questions ({Path(cfg.questions).name})")
    t.add_column("metric")
    for mode in MODES:
        t.add_column(mode, justify="right")
    for key in results["bm25"]:
        t.add_row(
            key,
            *(
                f"{results[m][key]:.3f}" if key != "ms_per_query" else f"{results[m][key]:.1f}"
                for m in MODES
            ),
        )
    Console().print(t)
    if best_single is not None:
        h = results["hybrid"]["recall@5"]
        verdict = "at least as good as" if h >= best_single else "below"
        print(
            f"hybrid recall@5 {h:.3f} is {verdict} the better single retriever ({best_single:.3f})"
        )
    return 0
