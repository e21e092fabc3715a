"""Data pipeline throughput: Oficina's `data prepare` next to datatrove on the same corpus.

    .venv/bin/python benchmarks/data.py            # 100 MB generated corpus (the README figure)
    .venv/bin/python benchmarks/data.py --quick    # 10 MB, a couple of minutes

The corpus is generated from real text: sentences of the Python language reference
(``pydoc_data.topics``, English) and of the four Portuguese seed texts, shuffled into documents
of 8-40 sentences, with planted exact duplicates (4%), near duplicates (4%, a few words
changed), spam (2%), machine-generated boilerplate (1%), PII (5%) and too-short documents (3%).

Both engines run one process on the same JSONL file, with the same stage list:
language id (py3langid) -> Gopher quality + Gopher repetition + C4-style boilerplate ->
spam -> PII -> exact dedup -> MinHash near dedup (5-gram shingles, ~0.8 threshold), writing
Parquet. datatrove uses its own components where it has them (Gopher filters, C4 filter,
PIIFormatter — e-mail and IP only, where Oficina redacts seven kinds — and its four-step
MinHash dedup); language id and spam have no offline datatrove component, so both call the same
functions there (a LambdaFilter). Words are split by the same regex in both (datatrove's English
tokenizer needs spaCy, which is not installed).

Then: tokenizer training time (byte-level BPE, 32k vocabulary) on the same corpus.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

from _machine import machine  # noqa: E402

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SEEDS = Path("/work/shared/seeds")
_SENT = re.compile(r"(?<=[.!?])\s+")


def sentence_bank() -> tuple[list[str], list[str]]:
    from pydoc_data.topics import topics

    en = [
        " ".join(s.split())
        for t in topics.values()
        for para in t.split("\n\n")
        for s in _SENT.split(para)
        if len(s.split()) >= 6 and "::=" not in s
    ]
    pt: list[str] = []
    here = Path(__file__).resolve().parents[1]
    for d in (SEEDS, here / "examples" / "seeds"):
        if d.is_dir():
            for f in sorted(d.glob("*.txt")):
                pt += [
                    " ".join(s.split()) for s in _SENT.split(f.read_text()) if len(s.split()) >= 6
                ]
    return en, pt or en


def generate(path: Path, target_mb: float, seed: int = 0) -> dict:
    rng = random.Random(seed)
    en, pt = sentence_bank()
    vocab = sorted({w for s in en[:3000] for w in s.split() if w.isalpha()})
    made = {"docs": 0, "exact": 0, "near": 0, "spam": 0, "machine": 0, "pii": 0, "short": 0}
    recent: list[str] = []
    size = 0
    with open(path, "w", encoding="utf-8") as f:
        while size < target_mb * 1e6:
            r = rng.random()
            if r < 0.04 and recent:
                text = rng.choice(recent)
                made["exact"] += 1
            elif r < 0.08 and recent:
                words = rng.choice(recent).split(" ")
                for i in rng.sample(range(len(words)), min(len(words), rng.randint(1, 3))):
                    words[i] = rng.choice(vocab)
                text = " ".join(words)
                made["near"] += 1
            elif r < 0.10:
                text = " ".join(rng.choice(en) for _ in range(6)) + (
                    " Click here to buy now! Limited time offer, 100% free money!" * 2
                )
                made["spam"] += 1
            elif r < 0.11:
                text = "As an AI language model, I cannot do that. " + " ".join(
                    rng.choice(en) for _ in range(8)
                )
                made["machine"] += 1
            elif r < 0.14:
                text = rng.choice(en)
                made["short"] += 1
            else:
                bank = pt if rng.random() < 0.3 else en
                sents = [rng.choice(bank) for _ in range(rng.randint(8, 40))]
                if rng.random() < 0.06:
                    sents.insert(
                        rng.randrange(len(sents)),
                        f"Contact maria.{rng.randint(1, 9999)}@example.com or +55 11 9{rng.randint(1000, 9999)}-{rng.randint(1000, 9999)}.",
                    )
                    made["pii"] += 1
                paras = [" ".join(sents[i : i + 5]) for i in range(0, len(sents), 5)]
                text = "\n\n".join(paras)
                recent.append(text)
                if len(recent) > 2000:
                    recent.pop(0)
            line = json.dumps({"id": f"d{made['docs']}", "text": text}, ensure_ascii=False)
            f.write(line + "\n")
            size += len(line.encode("utf-8")) + 1
            made["docs"] += 1
    made["mb"] = round(size / 1e6, 2)
    return made


STAGES = [
    {"type": "normalize"},
    {"type": "langid", "languages": ["en", "pt"], "min_score": 0.5},
    {"type": "quality", "min_words": 50},
    {"type": "spam"},
    {"type": "pii"},
    {"type": "exact_dedup"},
    {"type": "near_dedup", "threshold": 0.8, "num_perm": 112, "ngram": 5},
]


def run_oficina(data: Path, work: Path, workers: int = 1) -> dict:
    from oficina.data.pipeline import PrepareConfig, run

    os.environ["OFICINA_HOME"] = str(work / "ws")
    out = work / f"oficina-{workers}"
    t0 = time.time()
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
        run(
            PrepareConfig(
                inputs=[str(data)], out=str(out), stages=STAGES, shard_docs=5000, workers=workers
            )
        )
    wall = time.time() - t0
    report = json.loads((out / "report.json").read_text())
    return {"wall": wall, "kept": report["docs_kept"], "docs": report["docs_in"], "report": report}


def run_datatrove(data: Path, work: Path) -> dict:
    import logging

    import xxhash
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
        LambdaFilter,
    )
    from datatrove.pipeline.formatters import PIIFormatter
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter, ParquetWriter
    from datatrove.utils.word_tokenizers import WordTokenizer
    from loguru import logger

    from oficina.data.stages.langid import detect
    from oficina.data.stages.normalize import normalize_text
    from oficina.data.stages.spam import Spam, SpamConfig

    logger.remove()
    logging.getLogger("datatrove").setLevel(logging.WARNING)
    # datatrove 0.10.1 hands str to xxhash, which xxhash 4 refuses: encode first (same hash).
    import datatrove.utils.hashes.xxhash as dt_xx

    dt_xx.xxhash32 = lambda data: xxhash.xxh32_intdigest(
        data.encode("utf-8") if isinstance(data, str) else data
    )
    dt_xx.xxhash64 = lambda data: xxhash.xxh64_intdigest(
        data.encode("utf-8") if isinstance(data, str) else data
    )

    class RegexWords(WordTokenizer):
        """The word split Oficina uses; datatrove's English tokenizer needs spaCy."""

        _w = re.compile(r"\w+(?:['’-]\w+)*")

        def __init__(self):
            super().__init__("en")

        def word_tokenize(self, text):
            return self._w.findall(text)

        def sent_tokenize(self, text):
            return [s for s in _SENT.split(text) if s]

        def span_tokenize(self, text):
            return [m.span() for m in self._w.finditer(text)]

    words = RegexWords()
    spam = Spam(SpamConfig())
    seen: set[bytes] = set()

    def lang_ok(doc) -> bool:
        doc.text = normalize_text(doc.text)
        lang, score = detect(doc.text)
        doc.metadata["language"] = lang
        return lang in ("en", "pt") and score >= 0.5

    def exact_new(doc) -> bool:
        h = xxhash.xxh3_128_digest(re.sub(r"[\W_]+", " ", doc.text.casefold()).strip().encode())
        if h in seen:
            return False
        seen.add(h)
        return True

    mh = MinhashConfig(n_grams=5, num_buckets=14, hashes_per_bucket=8)
    d = work / "datatrove"
    logs = d / "logs"
    logs.mkdir(parents=True)
    t0 = time.time()
    steps = [
        [
            JsonlReader(str(data.parent), glob_pattern=data.name),
            LambdaFilter(lang_ok),
            GopherRepetitionFilter(language=words),
            GopherQualityFilter(language=words, min_doc_words=50),
            C4QualityFilter(
                language=words,
                filter_no_terminal_punct=False,
                min_num_sentences=-1,
                min_words_per_line=-1,
                max_word_length=-1,
                filter_curly_bracket=False,
            ),
            LambdaFilter(lambda doc: spam.check(doc.text) is None),
            PIIFormatter(),
            LambdaFilter(exact_new),
            JsonlWriter(str(d / "filtered"), compression=None),
        ],
        [
            JsonlReader(str(d / "filtered")),
            MinhashDedupSignature(str(d / "sigs"), config=mh, language=words),
        ],
        [MinhashDedupBuckets(str(d / "sigs"), str(d / "buckets"), config=mh)],
        [MinhashDedupCluster(str(d / "buckets"), str(d / "remove"), config=mh)],
        [
            JsonlReader(str(d / "filtered")),
            MinhashDedupFilter(str(d / "remove")),
            ParquetWriter(str(d / "out")),
        ],
    ]
    with open(logs.parent / "stderr.log", "w") as err, contextlib.redirect_stderr(err):
        for i, pipeline in enumerate(steps):
            # The bucket step runs one task per band (datatrove requires it), still one worker.
            tasks = mh.num_buckets if i == 2 else 1
            LocalPipelineExecutor(
                pipeline=pipeline, tasks=tasks, workers=1, logging_dir=str(logs / str(i))
            ).run()
    wall = time.time() - t0
    import pyarrow.parquet as pq

    kept = sum(pq.read_metadata(f).num_rows for f in (d / "out").rglob("*.parquet"))
    return {"wall": wall, "kept": kept}


def tokenizer_time(data: Path, vocab: int) -> dict:
    from oficina.data.readers import iter_texts
    from oficina.data.tokenizer import train_tokenizer

    texts = list(iter_texts([str(data)]))
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    t0 = time.time()
    tok = train_tokenizer(texts, vocab, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    wall = time.time() - t0
    sample = texts[-200:]
    n_tok = sum(len(e.ids) for e in tok.encode_batch(sample))
    return {
        "wall": wall,
        "mb": n_bytes / 1e6,
        "bytes_per_token": sum(len(t.encode()) for t in sample) / n_tok,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="10 MB instead of 100 MB")
    ap.add_argument("--mb", type=float, default=None, help="corpus size in MB")
    ap.add_argument("--vocab", type=int, default=32000, help="tokenizer vocabulary")
    args = ap.parse_args()
    mb = args.mb or (10.0 if args.quick else 100.0)
    print(f"machine: {machine()}")
    work = Path(tempfile.mkdtemp(prefix="oficina-bench-data-"))
    try:
        data = work / "in" / "corpus.jsonl"
        data.parent.mkdir(parents=True)
        t0 = time.time()
        made = generate(data, mb)
        print(f"corpus: {made} (generated in {time.time() - t0:.1f} s)")
        ofi = run_oficina(data, work)
        dt = run_datatrove(data, work)
        ofi2 = run_oficina(data, work, workers=2)
        tok = tokenizer_time(data, args.vocab)
        docs = ofi["docs"]
        rows = [
            ("pipeline wall time (s)", ofi["wall"], dt["wall"]),
            ("documents / s", docs / ofi["wall"], docs / dt["wall"]),
            ("MB / s", made["mb"] / ofi["wall"], made["mb"] / dt["wall"]),
            ("documents kept", ofi["kept"], dt["kept"]),
        ]
        print(f"\n{'one process each':<26}{'oficina':>12}{'datatrove':>12}{'ratio':>9}")
        for name, a, b in rows:
            ratio = a / b if b else float("nan")
            if name.startswith("pipeline"):
                ratio = b / a  # >1: Oficina is faster
            print(f"{name:<26}{a:>12.2f}{b:>12.2f}{ratio:>8.2f}x")
        print("(ratio: Oficina over datatrove; for wall time, datatrove's time over Oficina's)")
        print(
            f"oficina --workers 2: {ofi2['wall']:.1f} s, {docs / ofi2['wall']:.1f} docs/s, "
            f"{made['mb'] / ofi2['wall']:.2f} MB/s ({ofi['wall'] / ofi2['wall']:.2f}x one process;"
            f" same {ofi2['kept']} documents kept: {ofi2['kept'] == ofi['kept']})"
        )
        stages = ofi["report"]["stages"]
        print("oficina removed: " + ", ".join(f"{s['name']} {s['removed_total']}" for s in stages))
        print(
            f"\ntokenizer: byte-level BPE, vocab {args.vocab}, trained on {tok['mb']:.1f} MB in "
            f"{tok['wall']:.1f} s ({tok['mb'] / tok['wall']:.2f} MB/s); "
            f"{tok['bytes_per_token']:.2f} bytes/token on the last 200 documents"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
