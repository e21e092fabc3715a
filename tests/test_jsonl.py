"""The one JSONL reader: good rows kept, malformed lines counted, a missing file named."""

from __future__ import annotations

import pytest

from oficina.errors import UserError
from oficina.jsonl import read_jsonl


def test_rows_kept_and_bad_lines_counted(tmp_path):
    f = tmp_path / "rows.jsonl"
    f.write_text('{"a": 1}\n\n not json\n[1, 2]\n{"a": "é"}\n"text"\n', encoding="utf-8")
    rows, bad = read_jsonl(f)
    assert rows == [{"a": 1}, {"a": "é"}]
    assert bad == 3  # not JSON, a list, a bare string; the blank line is not counted


def test_missing_file_names_what_it_is(tmp_path):
    with pytest.raises(UserError, match="training split not found: .*none.jsonl"):
        read_jsonl(tmp_path / "none.jsonl", "training split")
