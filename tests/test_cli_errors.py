"""Every failure a user can cause ends in one line and a non-zero exit, with nothing half-written.

Bad output paths per verb (a folder asked for under a regular file), a full disk and a
read-only one (real tmpfs mounts when this process may mount, else skipped; a full disk is also
simulated in-process), chat templates the Jinja sandbox refuses or cannot parse. Tracebacks
appear only with --debug or OFICINA_DEBUG=1; a real bug still raises.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from oficina.cli import main


def _one_line(capsys, code: int, verb: str, *needles: str) -> str:
    err = capsys.readouterr().err
    assert code != 0, err
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(lines) == 1, err
    line = lines[0][lines[0].index(f"oficina {verb}: error:") :]
    assert err.rstrip().endswith(line), err  # nothing after it
    for n in needles:
        assert n in line, line
    return line


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder\n")
    docs = tmp_path / "docs.jsonl"
    docs.write_text(
        "".join(
            f'{{"text": "document {i}: {" ".join(["word"] * (i + 30))} end"}}\n' for i in range(40)
        )
    )
    prompts = tmp_path / "in.jsonl"
    prompts.write_text('{"prompt": "hi"}\n{"prompt": "there"}\n')
    sft = tmp_path / "sft.jsonl"
    sft.write_text(
        "".join(json.dumps({"prompt": f"q {i}", "completion": "a"}) + "\n" for i in range(8))
    )
    return {"file": a_file, "docs": docs, "prompts": prompts, "sft": sft}


def _cases(tiny_lm: Path, f: dict[str, Path], out: Path) -> list[tuple[str, list[str]]]:
    """(verb, argv) of every writing verb with its output at ``out``."""
    return [
        ("data prepare", ["data", "prepare", str(f["docs"]), "--out", str(out / "dp")]),
        ("data pack", ["data", "pack", str(f["docs"]), "--tokenizer", str(tiny_lm), "--out", str(out / "pk")]),
        ("tokenizer train", ["tokenizer", "train", str(f["docs"]), "--out", str(out / "tok")]),
        ("batch", ["batch", str(tiny_lm), "--input", str(f["prompts"]), "--output", str(out / "o.jsonl"), "--max-new-tokens", "2"]),
        ("finetune", ["finetune", str(tiny_lm), "--data", str(f["sft"]), "--out", str(out / "ft"), "--max-steps", "1"]),
    ]  # fmt: skip


def test_an_output_under_a_regular_file(tiny_lm, files, capsys):
    for verb, argv in _cases(tiny_lm, files, files["file"]):
        line = _one_line(capsys, main(argv), verb, str(files["file"]), "not a folder")
        assert "[ENOTDIR]" in line
    assert files["file"].read_text() == "not a folder\n"
    code = main(["--workspace", str(files["file"] / "ws"), "runs", "list"])
    _one_line(capsys, code, "runs list", "not a folder")


@pytest.fixture
def mount_tmpfs(tmp_path):
    """mount(options) -> a fresh tmpfs folder; skipped where this process may not mount."""
    mounted: list[Path] = []

    def mount(options: str) -> Path:
        where = tmp_path / f"mnt{len(mounted)}"
        where.mkdir()
        r = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True
        )
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
        mounted.append(where)
        return where

    yield mount
    for m in mounted:
        subprocess.run(["umount", str(m)], check=False)


def _leftovers(root: Path) -> list[str]:
    """Files a failed command left behind, apart from resume state and the filler."""
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and p.name != "filler" and "_state" not in p.parts and p.stat().st_size
    )


def test_a_full_disk(tiny_lm, files, capsys, mount_tmpfs):
    full = mount_tmpfs("size=256k")
    with open(full / "filler", "wb") as f:  # leave a few KB: the writes start, then fail
        f.write(b"\0" * (256 - 8) * 1024)
    for verb, argv in _cases(tiny_lm, files, full):
        code = main(argv)
        line = _one_line(capsys, code, verb, "no space left", "[ENOSPC]", str(full))
        assert code == 1, line
    # tokenizer and model saves are staged: no half-saved folder stays behind.
    assert not any((full / d).exists() and any((full / d).iterdir()) for d in ("tok", "ft")), (
        _leftovers(full)
    )
    assert not list(full.rglob(".*.tmp")), "an atomic write left its temp file"


def test_a_read_only_disk(tiny_lm, files, capsys, mount_tmpfs):
    ro = mount_tmpfs("ro,size=64k")
    for verb, argv in _cases(tiny_lm, files, ro):
        line = _one_line(capsys, main(argv), verb, str(ro), "read-only")
        assert "[EROFS]" in line
    code = main(["--workspace", str(ro / "ws"), "generate", str(tiny_lm), "--prompt", "hi"])
    _one_line(capsys, code, "generate", "read-only")


def test_a_full_disk_simulated_in_process(tiny_lm, capsys, monkeypatch, tmp_path):
    """Where mounting is not allowed: every fsync fails as on a full disk; no temp file stays."""

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    code = main(["generate", str(tiny_lm), "--prompt", "hi", "--max-new-tokens", "2"])
    _one_line(capsys, code, "generate", "no space left", "[ENOSPC]", "workspace")
    assert not list(tmp_path.rglob(".*.tmp"))


@pytest.mark.parametrize(
    "template, needles",
    [
        ("{{ ''.__class__.__mro__[1].__subclasses__() }}", ("sandbox", "__class__")),
        ("{{ cycler.__init__.__globals__.os.system('touch CANARY') }}", ("sandbox",)),
        ("{% for m in %}", ("template syntax error", "line 1")),
    ],
    ids=["mro-escape", "globals-escape", "syntax"],
)
def test_a_chat_template_the_sandbox_refuses(
    tiny_lm, tmp_path, capsys, monkeypatch, template, needles
):
    d = tmp_path / "model"
    shutil.copytree(tiny_lm, d)
    (d / "chat_template.jinja").write_text(template)
    monkeypatch.chdir(tmp_path)  # where a CANARY would land; restored after the test
    code = main(["generate", str(d), "--prompt", "hi", "--max-new-tokens", "2"])
    assert code == 2
    _one_line(capsys, code, "generate", *needles)
    assert not (tmp_path / "CANARY").exists()


def test_debug_shows_the_traceback(tiny_lm, files, monkeypatch):
    argv = ["data", "prepare", str(files["docs"]), "--out", str(files["file"] / "x")]
    with pytest.raises(NotADirectoryError):
        main([*argv, "--debug"])
    monkeypatch.setenv("OFICINA_DEBUG", "1")
    with pytest.raises(NotADirectoryError):
        main(argv)


def test_a_bug_is_not_dressed_up_as_a_user_error(monkeypatch):
    """Only failures the user can cause are mapped; anything else keeps its traceback."""
    import oficina.runs

    def broken(cfg):
        raise KeyError("a bug")

    monkeypatch.setattr(oficina.runs, "list_cmd", broken)
    with pytest.raises(KeyError):
        main(["runs", "list"])


def _config_not_json(d: Path) -> None:
    (d / "config.json").write_text("{not json")


def _unknown_architecture(d: Path) -> None:
    c = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**c, "model_type": "no-such-architecture"}))


def _tokenizer_not_json(d: Path) -> None:
    (d / "tokenizer.json").write_text("garbage")


@pytest.mark.parametrize(
    "breakage",
    [_config_not_json, _unknown_architecture, _tokenizer_not_json],
    ids=lambda f: f.__name__.strip("_"),
)
def test_a_broken_model_folder(tiny_lm, tmp_path, capsys, breakage):
    d = tmp_path / "model"
    shutil.copytree(tiny_lm, d)
    breakage(d)
    code = main(["generate", str(d), "--prompt", "hi", "--max-new-tokens", "2"])
    assert code == 2
    _one_line(capsys, code, "generate", f"cannot load the model in {d}")


def test_an_adapter_that_does_not_fit_its_base(tiny_lm, tmp_path, capsys):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    a = tmp_path / "lora"
    peft = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_lm), LoraConfig(r=2, target_modules=["q_proj"])
    )
    peft.save_pretrained(a)
    c = json.loads((a / "adapter_config.json").read_text())
    (a / "adapter_config.json").write_text(json.dumps({**c, "target_modules": ["no_such_proj"]}))
    code = main(["generate", str(tiny_lm), "--prompt", "hi", "--adapter", str(a)])
    assert code == 2
    _one_line(capsys, code, "generate", f"cannot load the adapter in {a}")
