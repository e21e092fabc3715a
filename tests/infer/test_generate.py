"""``oficina generate`` and ``oficina chat`` end to end through the CLI."""

from __future__ import annotations

import io
import json
import sys

import pytest

from oficina.cli import main


def _gen(capsys, *args):
    code = main(["generate", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_same_seed_same_text_at_temperature_1(tiny_lm, capsys):
    args = [
        str(tiny_lm),
        "--prompt",
        "def",
        "--temperature",
        "1",
        "--max-new-tokens",
        "20",
        "--no-chat",
    ]
    _, a, err = _gen(capsys, *args, "--seed", "11")
    _, b, _ = _gen(capsys, *args, "--seed", "11")
    _, c, _ = _gen(capsys, *args, "--seed", "12")
    assert a == b and a != c
    assert "20 completion tokens" in err and "tokens/s" in err  # numbers on stderr


def test_json_output_and_run_record(tiny_lm, capsys, isolated_workspace):
    code, out, _ = _gen(capsys, str(tiny_lm), "--prompt", "hi", "--max-new-tokens", "7", "--json")
    assert code == 0
    row = json.loads(out)
    assert row["chat_template"] is True and row["prompt"].startswith("<|im_start|>user\nhi")
    assert row["completion_tokens"] == 7 and row["tokens_per_s"] > 0 and row["parameters"] > 0
    run = json.loads((isolated_workspace / "runs" / row["run"] / "run.json").read_text())
    assert run["status"] == "completed" and run["summary"]["completion_tokens"] == 7
    assert (isolated_workspace / "runs" / row["run"] / "output.txt").read_text() == row["text"]


def test_fewshot_prompt_from_template_and_examples(tiny_lm, capsys, repo_root):
    fs = repo_root / "examples" / "fewshot"
    code, out, _ = _gen(
        capsys,
        str(tiny_lm),
        "--prompt",
        "lemon",
        "--template",
        str(fs / "fruit.yaml"),
        "--examples",
        str(fs / "fruit.jsonl"),
        "--shots",
        "2",
        "--max-new-tokens",
        "3",
        "--json",
    )
    row = json.loads(out)
    assert row["prompt"] == "plum: drupe\npear: pome\nlemon:"  # no chat template with few-shot
    assert row["shots"] == 2 and row["chat_template"] is False
    _, out, _ = _gen(
        capsys,
        str(tiny_lm),
        "--prompt",
        "lemon",
        "--template",
        str(fs / "fruit.yaml"),
        "--examples",
        str(fs / "fruit.jsonl"),
        "--shots",
        "3",
        "--strategy",
        "random",
        "--seed",
        "4",
        "--max-new-tokens",
        "1",
        "--json",
    )
    assert json.loads(out)["prompt"].count("\n") == 3


def test_bad_input_is_one_line_error(tiny_lm, capsys):
    code, _, err = _gen(capsys, str(tiny_lm), "--prompt", "x", "--template", "/nope.yaml")
    assert code == 2 and "template file not found" in err and "Traceback" not in err
    code, _, err = _gen(capsys, str(tiny_lm), "--prompt", "x", "--top-p", "2")
    assert code == 2 and "top_p" in err


def test_chat_reads_piped_stdin(tiny_lm, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello\n/reset\n\nagain\n/exit\nignored\n"))
    code = main(["chat", str(tiny_lm), "--max-new-tokens", "4", "--temperature", "0"])
    out = capsys.readouterr()
    assert code == 0
    assert out.err.count("[4 tokens") == 2 and "history cleared" in out.err  # /exit stops reading
    assert out.out.count("\n") >= 2  # each reply ends with a newline


@pytest.mark.integration
def test_smollm2_knows_paris_and_the_seed_fewshot(smollm2, capsys, repo_root):
    code, out, _ = _gen(
        capsys,
        "smollm2-135m-instruct",
        "--prompt",
        "What is the capital of France?",
        "--temperature",
        "0",
        "--max-new-tokens",
        "24",
    )
    assert code == 0 and "Paris" in out
    # The seed's prompt as written, raw (no chat template): a short one-line answer follows.
    _, out, _ = _gen(
        capsys,
        "smollm2-135m-instruct",
        "--prompt",
        "plum: drupe\npear: pome\nlemon:",
        "--no-chat",
        "--max-new-tokens",
        "8",
        "--json",
    )
    row = json.loads(out)
    first = row["text"].split("\n")[0].strip()
    assert row["prompt"] == "plum: drupe\npear: pome\nlemon:"
    assert first and len(first.split()) <= 3 and first.replace(" ", "").isalpha()
