"""Split a document into overlapping chunks on paragraph and sentence boundaries.

Each chunk keeps its character offsets into the original text, so ``text[start:end]`` is the
chunk exactly and a citation can point back into the document. Chunks are packed from whole
sentences (a run of words only for a sentence longer than ``max_chars``) up to ``max_chars``,
ending at a paragraph end when one falls in the chunk's second half; the next chunk starts with
the previous one's last sentences that fit in ``overlap_chars``, so no sentence is cut in half
and a fact near a boundary is whole in at least one chunk.

    from oficina.rag.chunking import chunk_text
    for start, end in chunk_text(doc, max_chars=800, overlap_chars=150):
        print(start, end, doc[start:end][:40])
"""

from __future__ import annotations

import re

# A sentence ends at . ! ? (optionally followed by a closing quote/bracket) then whitespace;
# a paragraph ends at a blank line. Both are split points; the whitespace stays between units.
_PARA = re.compile(r"\n[ \t]*\n\s*")
_SENT = re.compile(r"(?<=[.!?])[\"')\]]*\s+")
_WORD = re.compile(r"\s+")


def _split(text: str, start: int, end: int, pattern: re.Pattern) -> list[tuple[int, int]]:
    """Spans of text[start:end] between matches of pattern, stripped of surrounding whitespace."""
    spans, pos = [], start
    for m in pattern.finditer(text, start, end):
        spans.append((pos, m.start()))
        pos = m.end()
    spans.append((pos, end))
    out = []
    for s, e in spans:
        while s < e and text[s].isspace():
            s += 1
        while e > s and text[e - 1].isspace():
            e -= 1
        if e > s:
            out.append((s, e))
    return out


def _units(text: str, max_chars: int) -> list[tuple[int, int, bool]]:
    """Sentences (start, end, ends_paragraph); a sentence longer than max_chars becomes word
    runs, and a single word longer than that is cut hard."""
    units: list[tuple[int, int, bool]] = []
    for ps, pe in _split(text, 0, len(text), _PARA):
        para: list[tuple[int, int]] = []
        for ss, se in _split(text, ps, pe, _SENT):
            if se - ss <= max_chars:
                para.append((ss, se))
                continue
            cur = None
            for ws, we in _split(text, ss, se, _WORD):
                while we - ws > max_chars:  # one enormous token (a URL, base64...)
                    if cur:
                        para.append(cur)
                        cur = None
                    para.append((ws, ws + max_chars))
                    ws += max_chars
                if cur and we - cur[0] > max_chars:
                    para.append(cur)
                    cur = None
                cur = (cur[0] if cur else ws, we)
            if cur:
                para.append(cur)
        units += [(s, e, k == len(para) - 1) for k, (s, e) in enumerate(para)]
    return units


def chunk_text(text: str, max_chars: int = 800, overlap_chars: int = 150) -> list[tuple[int, int]]:
    """(start, end) offsets of overlapping chunks of ``text``; ``text[start:end]`` is the chunk.

    A chunk is whole sentences; it ends at a paragraph end when one falls in its second half.
    """
    if max_chars < 50:
        raise ValueError("max_chars must be at least 50")
    if not 0 <= overlap_chars < max_chars:
        raise ValueError("overlap_chars must be >= 0 and smaller than max_chars")
    units = _units(text, max_chars)
    chunks: list[tuple[int, int]] = []
    i = 0
    while i < len(units):
        j = i
        while j + 1 < len(units) and units[j + 1][1] - units[i][0] <= max_chars:
            j += 1
        if j + 1 < len(units) and not units[j][2]:
            for p in range(j - 1, i - 1, -1):  # prefer to stop at a paragraph end
                if units[p][2] and units[p][1] - units[i][0] >= max_chars // 2:
                    j = p
                    break
        chunks.append((units[i][0], units[j][1]))
        if j + 1 >= len(units):
            break
        # Step back over whole sentences while they fit in the overlap, but always move forward.
        nxt = j + 1
        while nxt - 1 > i and units[j][1] - units[nxt - 1][0] <= overlap_chars:
            nxt -= 1
        i = nxt
    return chunks
