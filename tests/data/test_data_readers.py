"""Readers: every format, compression, folders and globs; malformed input counted exactly."""

from __future__ import annotations

import gzip
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard
from data_planted import EN, PT

from oficina.data.pipeline import PrepareConfig, run
from oficina.data.readers import Malformed, SourceConfig, html_main_text, read_file, read_inputs

HTML = f"""<html><head><title>Rio</title><script>var x = "tracking";</script></head><body>
<nav><a href="/">Home</a> | <a href="/about">About</a></nav>
<div class="cookie-banner">We use cookies. Accept?</div>
<main><h1>O rio</h1><p>{PT.split(".")[0]} <a href="#">link</a> inline.</p>
<ul><li>primeiro item</li><li>segundo item</li></ul><pre>x = 1\n  y = 2</pre></main>
<footer>© 2024 Example Corp</footer></body></html>"""


def test_html_main_text_drops_boilerplate():
    title, text = html_main_text(HTML)
    assert title == "Rio"
    assert text.startswith("O rio\n\nO rio atravessa") and "link inline." in text
    assert "primeiro item\n\nsegundo item" in text and "x = 1\n  y = 2" in text
    for junk in ("tracking", "Home", "cookies", "Example Corp"):
        assert junk not in text


def test_every_format_and_compression(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    (d / "a.txt").write_text(EN, encoding="utf-8")
    (d / "b.md").write_text("# Título\n\n" + PT, encoding="utf-8")
    (d / "c.html").write_text(HTML, encoding="utf-8")
    rows = [{"id": "j1", "body": EN, "tag": "x"}, {"id": "j2", "body": PT}]
    (d / "d.jsonl.gz").write_bytes(
        gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode())
    )
    (d / "e.jsonl.zst").write_bytes(
        zstandard.ZstdCompressor().compress(json.dumps(rows[0]).encode())
    )
    (d / "f.csv").write_text(f'id,body\nc1,"{EN}"\nc2,"{PT}"\n', encoding="utf-8")
    pq.write_table(pa.table({"id": ["p1"], "body": [PT]}), d / "g.parquet")
    sources = [
        SourceConfig(name="web", match="*.html", licence="CC-BY-4.0"),
        SourceConfig(name="corpus", licence="CC0-1.0", text_field="body"),
    ]
    docs = list(read_inputs([str(d)], sources))
    assert not [x for x in docs if isinstance(x, Malformed)]
    ids = [x["id"] for x in docs]
    assert ids == [
        str(d / "a.txt"),
        str(d / "b.md"),
        str(d / "c.html"),
        "j1",
        "j2",
        "j1",
        "c1",
        "c2",
        "p1",
    ]
    by_id = {x["id"]: x for x in docs}
    assert by_id["j1"]["metadata"] == {"tag": "x"} and by_id["j1"]["licence"] == "CC0-1.0"
    assert (
        by_id[str(d / "c.html")]["source"] == "web"
        and by_id[str(d / "c.html")]["licence"] == "CC-BY-4.0"
    )
    assert by_id["c2"]["text"] == PT and by_id["p1"]["source"] == "corpus"
    # A glob picks the same files.
    assert len(list(read_inputs([str(d / "*.jsonl*")], sources))) == 3


def test_malformed_input_is_counted_exactly_and_valid_records_kept(tmp_path):
    good = [json.dumps({"id": f"g{i}", "text": f"{EN} number {i}"}).encode() for i in range(10)]
    lines = list(good)
    lines.insert(2, b"{not json")
    lines.insert(5, b'{"id": "bad-utf8", "text": "caf\xe9 \xff"}')
    lines.insert(7, b'["a list, not an object"]')
    lines.insert(9, b'{"id": "no-text", "title": "x"}')
    lines.insert(11, b"")  # blank lines are not records
    (tmp_path / "a.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    # A gzip cut in the middle: the records before the cut are kept, the cut counted once.
    full = gzip.compress(b"".join(g + b"\n" for g in good[:5]) + b"x" * 50000)
    (tmp_path / "b.jsonl.gz").write_bytes(full[: len(full) - 30])
    (tmp_path / "c.csv").write_bytes(b"id,text\nr1,hello world\nr2,bad \xff byte\nr3,a,b\n")
    out = tmp_path / "out"
    run(PrepareConfig(inputs=[str(tmp_path / "*.*")], out=str(out), stages=[{"type": "normalize"}]))
    report = json.loads((out / "report.json").read_text())
    assert report["malformed"] == {
        "bad_json": 2,
        "invalid_utf8": 2,
        "missing_text": 1,
        "truncated_archive": 1,
        "bad_row": 1,
    }
    quarantine = [json.loads(x) for x in (out / "quarantine.jsonl").read_text().splitlines()]
    assert len(quarantine) == 7 and {q["reason"] for q in quarantine} == set(report["malformed"])
    assert report["docs_in"] == 10 + 5 + 1  # every valid record: a.jsonl, the gzip's first 5, r1
    table = pq.read_table(list(out.glob("*.parquet")))
    assert set(table.column("id").to_pylist()) >= {f"g{i}" for i in range(10)} | {"r1"}


def test_truncated_zstd_is_quarantined(tmp_path):
    lines = [json.dumps({"text": f"{EN} {os.urandom(300).hex()}"}).encode() for i in range(2000)]
    data = zstandard.ZstdCompressor().compress(b"\n".join(lines) + b"\n")
    p = tmp_path / "x.jsonl.zst"
    p.write_bytes(data[: len(data) // 2])
    items = list(read_file(p, SourceConfig()))
    bad = [x for x in items if isinstance(x, Malformed)]
    assert [b.reason for b in bad] == ["truncated_archive"]
    assert 0 < len(items) - 1 < 2000


def test_json_array_file(tmp_path):
    p = tmp_path / "a.json"
    p.write_text(json.dumps([{"id": "a", "text": EN}, {"id": "b"}, 3]))
    items = list(read_file(p, SourceConfig()))
    assert [x["id"] for x in items if isinstance(x, dict)] == ["a"]
    assert [x.reason for x in items if isinstance(x, Malformed)] == ["missing_text", "bad_json"]
