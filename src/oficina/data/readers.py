"""Readers: files, folders and globs of txt, Markdown, HTML, JSONL, CSV and Parquet -> documents.

Every document is a plain dict (cheap to ship to Ray workers and to write as Parquet):
``{"id", "text", "source", "licence", "metadata": dict}``. The source name and its licence come
from the ``sources`` section of the config (first ``match`` pattern that fits the file path).

Bad input never stops a run: a line that is not JSON, bytes that are not UTF-8, an archive cut
short, a CSV row with the wrong number of fields... each becomes a ``Malformed`` record (reason,
file, line, a short sample) that the pipeline counts and writes to a quarantine file. Every valid
record before and after it is still read.

    from oficina.data.readers import expand_inputs, read_file
    for item in read_file(path, SourceConfig()): ...
"""

from __future__ import annotations

import csv
import fnmatch
import glob
import io
import json
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field

from oficina.config import Section
from oficina.errors import NotFound, UserError

FORMATS = ("txt", "md", "html", "jsonl", "csv", "parquet")
SUFFIX_FORMAT = {
    ".txt": "txt",
    ".text": "txt",
    ".md": "md",
    ".markdown": "md",
    ".html": "html",
    ".htm": "html",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
    ".parquet": "parquet",
}
COMPRESSIONS = (".gz", ".zst")
CHUNK = 1 << 20
OUR_COLUMNS = ("id", "text", "source", "licence", "lang", "lang_score", "metadata")


class SourceConfig(Section):
    """Where documents come from, and under which licence they may be used."""

    name: str | None = Field(None, description="source name (default: the input file's stem)")
    match: str = Field("*", description="glob on the file path choosing this source ('*' = any)")
    licence: str = Field("unknown", description="licence of every document from this source")
    text_field: str = Field("text", description="JSONL/CSV/Parquet field holding the text")
    id_field: str = Field("id", description="field holding a document id (else file:line)")
    format: Literal["auto", "txt", "md", "html", "jsonl", "csv", "parquet"] = Field(
        "auto", description="file format (auto: from the file suffix)"
    )


@dataclass
class Malformed:
    """A record that could not be read; counted by ``reason`` and quarantined."""

    reason: str
    path: str
    location: str
    sample: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


class _Truncated(Exception):
    pass


class _Corrupt(Exception):
    pass


# ---------------------------------------------------------------------------- inputs


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Files, folders (recursively) and globs -> a sorted, de-duplicated list of files."""
    files: list[Path] = []
    for spec in inputs:
        p = Path(spec)
        if any(c in spec for c in "*?["):
            matched = sorted(Path(m) for m in glob.glob(spec, recursive=True))
            found = [m for m in matched if m.is_file()]
            if not found:
                raise UserError(f"no files match the pattern {spec}")
            files += found
        elif p.is_dir() and (p / "manifest.json").is_file():
            # The output folder of `oficina data prepare`: its shards, not its reports.
            try:
                manifest = json.loads((p / "manifest.json").read_text(encoding="utf-8"))
                files += [p / s["file"] for s in manifest["shards"]]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise UserError(f"{p}/manifest.json is not an oficina data manifest") from None
        elif p.is_dir():
            found = sorted(
                f
                for f in p.rglob("*")
                if f.is_file()
                and not any(part.startswith((".", "_")) for part in f.relative_to(p).parts)
                and file_format(f) is not None
            )
            if not found:
                raise UserError(f"folder {p} holds no readable files ({', '.join(FORMATS)})")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise NotFound(f"input not found: {spec}")
    seen: set[Path] = set()
    out = []
    for f in files:
        r = f.resolve()
        if r not in seen:
            seen.add(r)
            out.append(f)
    return out


def file_format(path: Path, declared: str = "auto") -> str | None:
    if declared != "auto":
        return declared
    name = path.name.lower()
    for c in COMPRESSIONS:
        if name.endswith(c):
            name = name[: -len(c)]
    return SUFFIX_FORMAT.get(Path(name).suffix)


def source_for(path: Path, sources: list[SourceConfig]) -> SourceConfig:
    """The first configured source whose pattern fits the path (or its name)."""
    for s in sources:
        if fnmatch.fnmatch(str(path), s.match) or fnmatch.fnmatch(path.name, s.match):
            return s
    return SourceConfig()


# ---------------------------------------------------------------------------- bytes


def _chunks(path: Path) -> Iterator[bytes]:
    """Decompressed bytes of a file; raises _Truncated if a gzip/zstd stream is cut short."""
    name = path.name.lower()
    with open(path, "rb") as f:
        if name.endswith(".gz"):
            d = zlib.decompressobj(wbits=31)
            while raw := f.read(CHUNK):
                try:
                    out = d.decompress(raw)
                    # A gzip file may hold several members: start a new one on leftover bytes.
                    while d.eof and d.unused_data:
                        rest = d.unused_data
                        yield out
                        d = zlib.decompressobj(wbits=31)
                        out = d.decompress(rest)
                except zlib.error as e:
                    raise _Corrupt(str(e)) from None
                if out:
                    yield out
            if not d.eof:
                raise _Truncated("gzip stream ends before its end marker")
        elif name.endswith(".zst"):
            import zstandard

            d = zstandard.ZstdDecompressor().decompressobj()
            started = False
            while raw := f.read(CHUNK):
                started = True
                try:
                    out = d.decompress(raw)
                    while d.eof and d.unused_data:
                        rest = d.unused_data
                        yield out
                        d = zstandard.ZstdDecompressor().decompressobj()
                        out = d.decompress(rest)
                except zstandard.ZstdError as e:
                    raise _Corrupt(str(e)) from None
                if out:
                    yield out
            if started and not d.eof:
                raise _Truncated("zstd frame ends before it is complete")
        else:
            while raw := f.read(CHUNK):
                yield raw


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(line number, bytes without newline); a truncated archive drops its partial last line."""
    buf = b""
    n = 0
    for chunk in _chunks(path):
        buf += chunk
        *complete, buf = buf.split(b"\n")
        for line in complete:
            n += 1
            yield n, line
    if buf:
        yield n + 1, buf


def _whole(path: Path) -> bytes:
    return b"".join(_chunks(path))


def _sample(b: bytes | str, n: int = 200) -> str:
    if isinstance(b, bytes):
        b = b[:n].decode("utf-8", errors="replace")
    return b[:n]


# ---------------------------------------------------------------------------- HTML

_DROP_TAGS = (
    "script, style, noscript, nav, header, footer, aside, form, iframe, svg, button, template"
)
_BLOCKS = {
    "p",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "li",
    "pre",
    "blockquote",
    "td",
    "th",
    "dt",
    "dd",
}
_BOILERPLATE_HINTS = ("cookie", "banner", "navbar", "menu", "sidebar", "footer", "advert", "share")


def html_main_text(html: str) -> tuple[str, str]:
    """(title, main text) of an HTML page: navigation, scripts and boilerplate blocks dropped.

    The page's ``<main>`` or ``<article>`` is preferred when it has one; text is taken block by
    block (paragraphs, headings, list items, code) so inline links stay inside their sentence.
    """
    from selectolax.lexbor import LexborHTMLParser

    tree = LexborHTMLParser(html)
    title_node = tree.css_first("title")
    title = title_node.text(strip=True) if title_node else ""
    for node in tree.css(_DROP_TAGS):
        node.decompose()
    for node in tree.css("[class], [id]"):
        attrs = f"{node.attributes.get('class') or ''} {node.attributes.get('id') or ''}".lower()
        if any(h in attrs for h in _BOILERPLATE_HINTS):
            node.decompose()
    root = tree.css_first("main") or tree.css_first("article") or tree.body or tree.root
    if root is None:
        return title, ""
    parts: list[str] = []
    for node in root.traverse(include_text=False):
        if node.tag not in _BLOCKS:
            continue
        parent, nested = node.parent, False
        while parent is not None and parent is not root:
            if parent.tag in _BLOCKS:
                nested = True
                break
            parent = parent.parent
        if nested:
            continue
        text = node.text(deep=True, separator="", strip=False)
        text = text if node.tag == "pre" else " ".join(text.split())
        if text.strip():
            parts.append(text.strip("\n"))
    if not parts:
        parts = [" ".join(root.text(separator=" ").split())]
    return title, "\n\n".join(p for p in parts if p)


# ---------------------------------------------------------------------------- records


def _doc(
    rec_id: str, text: str, src: SourceConfig, path: Path, metadata: dict | None = None
) -> dict:
    return {
        "id": rec_id,
        "text": text,
        "source": src.name or _stem(path),
        "licence": src.licence,
        "metadata": metadata or {},
    }


def _stem_suffix(path: Path) -> str:
    name = path.name.lower()
    for c in COMPRESSIONS:
        if name.endswith(c):
            name = name[: -len(c)]
    return Path(name).suffix


def _stem(path: Path) -> str:
    name = path.name
    for c in COMPRESSIONS:
        if name.lower().endswith(c):
            name = name[: -len(c)]
    return Path(name).stem


def _from_record(rec: dict, src: SourceConfig, path: Path, where: str) -> dict | Malformed:
    text = rec.get(src.text_field)
    if not isinstance(text, str) or not text.strip():
        return Malformed("missing_text", str(path), where, _sample(json.dumps(rec, default=str)))
    rid = rec.get(src.id_field)
    rec_id = str(rid) if rid not in (None, "") else f"{path.name}:{where}"
    meta = {
        k: v
        for k, v in rec.items()
        if k not in (src.text_field, src.id_field, "metadata") and v is not None
    }
    if isinstance(rec.get("metadata"), dict):  # flatten a previous run's metadata
        meta = {**rec["metadata"], **meta}
    return _doc(rec_id, text, src, path, meta)


def _read_json_array(path: Path, src: SourceConfig) -> Iterator[dict | Malformed]:
    raw = _whole(path)
    try:
        records = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        yield Malformed("invalid_utf8", str(path), "file", _sample(raw))
        return
    except json.JSONDecodeError:
        yield Malformed("bad_json", str(path), "file", _sample(raw))
        return
    for i, rec in enumerate(records, 1):
        if not isinstance(rec, dict):
            yield Malformed("bad_json", str(path), f"item {i}", _sample(json.dumps(rec)))
            continue
        yield _from_record(rec, src, path, f"item {i}")


def _read_jsonl(path: Path, src: SourceConfig) -> Iterator[dict | Malformed]:
    if _stem_suffix(path) == ".json":
        # A .json file may hold one array of records instead of one record per line.
        with open(path, "rb") as f:
            head = f.read(64).lstrip()
        if head.startswith(b"[") and not path.name.endswith(COMPRESSIONS):
            yield from _read_json_array(path, src)
            return
    for n, raw in _lines(path):
        if not raw.strip():
            continue
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            yield Malformed("invalid_utf8", str(path), f"line {n}", _sample(raw))
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            yield Malformed("bad_json", str(path), f"line {n}", _sample(line))
            continue
        if not isinstance(rec, dict):
            yield Malformed("bad_json", str(path), f"line {n}", _sample(line))
            continue
        yield _from_record(rec, src, path, f"line {n}")


def _read_csv(path: Path, src: SourceConfig) -> Iterator[dict | Malformed]:
    # surrogateescape keeps undecodable bytes visible per row, so one bad row is quarantined
    # and the rest of the file is still read.
    text = _whole(path).decode("utf-8", errors="surrogateescape")
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        return
    if src.text_field not in header:
        yield Malformed("missing_text_field", str(path), "header", _sample(",".join(header)))
        return
    for row in reader:
        where = f"row {reader.line_num}"
        if not row:
            continue
        if len(row) != len(header):
            yield Malformed("bad_row", str(path), where, _sample(",".join(row)))
            continue
        if any("\udc80" <= ch <= "\udcff" for cell in row for ch in cell):
            bad = ",".join(row).encode("utf-8", "surrogateescape")
            yield Malformed("invalid_utf8", str(path), where, _sample(bad))
            continue
        yield _from_record(dict(zip(header, row, strict=True)), src, path, where)


def _read_parquet(path: Path, src: SourceConfig) -> Iterator[dict | Malformed]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a broken file
        yield Malformed("corrupt_file", str(path), "file", _sample(str(e)))
        return
    if src.text_field not in pf.schema_arrow.names:
        yield Malformed("missing_text_field", str(path), "schema", _sample(str(pf.schema_arrow)))
        return
    # A shard written by `oficina data prepare` carries its own source and licence: keep them.
    ours = set(OUR_COLUMNS) <= set(pf.schema_arrow.names)
    row = 0
    try:
        for batch in pf.iter_batches(batch_size=4096):
            for rec in batch.to_pylist():
                row += 1
                meta = rec.get("metadata")
                # A file written by `oficina data prepare` carries its metadata as JSON text.
                if isinstance(meta, str) and meta.startswith("{"):
                    try:
                        rec = {**rec, "metadata": json.loads(meta)}
                    except json.JSONDecodeError:
                        pass
                doc = _from_record(rec, src, path, f"row {row}")
                if ours and isinstance(doc, dict):
                    meta = doc["metadata"]
                    doc["source"] = meta.pop("source", doc["source"])
                    doc["licence"] = meta.pop("licence", doc["licence"])
                    for k in ("lang", "lang_score"):
                        meta.pop(k, None)
                yield doc
    except Exception as e:
        yield Malformed("corrupt_file", str(path), f"after row {row}", _sample(str(e)))


def _read_whole(path: Path, src: SourceConfig, fmt: str) -> Iterator[dict | Malformed]:
    raw = _whole(path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        yield Malformed("invalid_utf8", str(path), "file", _sample(raw))
        return
    meta: dict = {"path": str(path)}
    if fmt == "html":
        title, text = html_main_text(text)
        if title:
            meta["title"] = title
    if not text.strip():
        yield Malformed("empty", str(path), "file", "")
        return
    yield _doc(str(path), text, src, path, meta)


def read_file(path: Path, src: SourceConfig) -> Iterator[dict | Malformed]:
    """Documents and malformed records of one file, in file order."""
    fmt = file_format(path, src.format)
    if fmt is None:
        raise UserError(
            f"cannot tell the format of {path}; name it .txt/.md/.html/.jsonl/.csv/.parquet "
            "(optionally .gz/.zst) or set format in the source config"
        )
    reader = {
        "jsonl": _read_jsonl,
        "csv": _read_csv,
        "parquet": _read_parquet,
    }.get(fmt)
    try:
        if reader is not None:
            yield from reader(path, src)
        else:
            yield from _read_whole(path, src, fmt)
    except _Truncated as e:
        yield Malformed("truncated_archive", str(path), "end", str(e))
    except _Corrupt as e:
        yield Malformed("corrupt_archive", str(path), "stream", _sample(str(e)))


def read_inputs(inputs: list[str], sources: list[SourceConfig]) -> Iterator[dict | Malformed]:
    """Every document of every input, in a fixed order (sorted files, file order within)."""
    for path in expand_inputs(inputs):
        yield from read_file(path, source_for(path, sources))


def iter_texts(inputs: list[str], text_field: str = "text") -> Iterator[str]:
    """Just the texts (tokenizer training, packing); malformed records are skipped."""
    src = SourceConfig(text_field=text_field)
    for path in expand_inputs(inputs):
        for item in read_file(path, src):
            if isinstance(item, dict):
                yield item["text"]
