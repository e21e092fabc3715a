"""The ``oficina`` command: one registry maps each verb to one module's config and entry function.

A verb stays thin: the CLI parses flags into the verb's typed config (``oficina.config``), and
calls ``entry(cfg)``. Modules are imported only for the verb being run, so ``--help`` is fast.

    oficina --help
    oficina size mini
    oficina generate smollm2-135m-instruct --prompt "What is the capital of France?"
"""

from __future__ import annotations

import errno
import importlib
import inspect
import os
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from oficina import __version__
from oficina.errors import Stopped, UserError


@dataclass(frozen=True)
class Verb:
    module: str
    config: str  # class name in module
    entry: str  # function name in module: entry(cfg) -> exit code (int)
    help: str
    decodes: bool = False  # its time is token-by-token decoding: OpenMP threads spin (openmp_wait)


# verb (possibly two words) -> where it lives. Keep this table the single source of truth.
VERBS: dict[str, Verb] = {
    "size": Verb(
        "oficina.models.sizing",
        "SizeConfig",
        "run",
        "what a model of N parameters costs: memory, FLOPs, time, dollars",
    ),
    "models list": Verb(
        "oficina.models.sources",
        "ModelsListConfig",
        "list_models",
        "packaged models, presets and cached conversions",
    ),
    "models pull": Verb(
        "oficina.models.sources",
        "ModelsPullConfig",
        "pull",
        "resolve a model spec to a local Hugging Face directory (converting once)",
    ),
    "models info": Verb(
        "oficina.models.sources",
        "ModelsInfoConfig",
        "info",
        "architecture, parameters, tokenizer and files of a model",
    ),
    "runs list": Verb(
        "oficina.runs", "RunsListConfig", "list_cmd", "recorded runs in this workspace"
    ),
    "runs show": Verb(
        "oficina.runs",
        "RunsShowConfig",
        "show",
        "one run: config, metrics, inputs and outputs (lineage)",
    ),
    "runs compare": Verb(
        "oficina.runs", "RunsCompareConfig", "compare", "two or more runs side by side"
    ),
    "generate": Verb(
        "oficina.infer.generate",
        "GenerateConfig",
        "run",
        "generate text (zero-, one-, few-shot prompting, streaming)",
        decodes=True,
    ),
    "chat": Verb(
        "oficina.infer.generate",
        "ChatConfig",
        "chat",
        "chat with a model in the terminal",
        decodes=True,
    ),
    "batch": Verb(
        "oficina.infer.batch",
        "BatchConfig",
        "run",
        "offline bulk inference over a JSONL, cached in SQLite",
        decodes=True,
    ),
    "batch lookup": Verb(
        "oficina.infer.batch",
        "LookupConfig",
        "lookup_verb",
        "answer from the bulk-inference cache alone",
    ),
    "quantize": Verb(
        "oficina.infer.quantize",
        "QuantizeConfig",
        "run",
        "int8 (PyTorch CPU) or GGUF (llama.cpp) with size, speed and quality",
        decodes=True,
    ),
    "serve": Verb(
        "oficina.serve.app",
        "ServeConfig",
        "run",
        "OpenAI-compatible HTTP server with a web chat and feedback",
        decodes=True,
    ),
    "feedback export": Verb(
        "oficina.serve.feedback",
        "FeedbackExportConfig",
        "export",
        "ratings and corrections -> SFT data and preference pairs",
    ),
    "data prepare": Verb(
        "oficina.data.pipeline",
        "PrepareConfig",
        "run",
        "raw documents -> clean, deduplicated Parquet with a report",
    ),
    "data pack": Verb(
        "oficina.data.pack",
        "PackConfig",
        "run",
        "tokenize and pack into fixed-length shards for pretraining",
    ),
    "tokenizer train": Verb(
        "oficina.data.tokenizer",
        "TokenizerTrainConfig",
        "train",
        "train a byte-level BPE tokenizer",
    ),
    "tokenizer eval": Verb(
        "oficina.data.tokenizer",
        "TokenizerEvalConfig",
        "evaluate",
        "bytes per token of tokenizers on held-out text",
    ),
    "pretrain": Verb(
        "oficina.train.recipes",
        "PretrainConfig",
        "pretrain_verb",
        "pretrain from a preset, or continue pretraining a model",
    ),
    "finetune": Verb(
        "oficina.train.recipes",
        "FinetuneConfig",
        "finetune_verb",
        "supervised fine-tuning: full or LoRA; classification heads",
    ),
    "distill": Verb(
        "oficina.train.recipes",
        "DistillConfig",
        "distill_verb",
        "knowledge distillation from a teacher into a smaller student",
    ),
    "merge": Verb(
        "oficina.train.recipes",
        "MergeConfig",
        "merge_verb",
        "fold a LoRA adapter into a plain checkpoint",
    ),
    "index": Verb(
        "oficina.rag.index", "IndexConfig", "run", "chunk, embed and index documents for retrieval"
    ),
    "index eval": Verb(
        "oficina.rag.evaluate",
        "IndexEvalConfig",
        "run",
        "recall@k and MRR of BM25, dense and hybrid retrieval",
    ),
    "ask": Verb(
        "oficina.rag.ask",
        "AskConfig",
        "run",
        "answer from your documents with numbered citations",
        decodes=True,
    ),
    "eval": Verb(
        "oficina.evals.evaluate",
        "EvalConfig",
        "run",
        "perplexity and task metrics with confidence intervals",
    ),
    "tune": Verb(
        "oficina.evals.tune",
        "TuneConfig",
        "run",
        "hyperparameter search over a training verb: TPE or grid, pruned, resumable, shared",
    ),
    "tune show": Verb(
        "oficina.evals.tune", "TuneShowConfig", "show", "the trials and best config of a search"
    ),
    "ladder": Verb(
        "oficina.ladder.run",
        "LadderConfig",
        "run",
        "the main job: which adaptation is cheapest for your quality bar",
    ),
}


# OpenMP's wait, chosen per verb before torch loads (libgomp reads it once, at load). A thread
# that finds no work either spins for a while (fast to wake) or sleeps at once (PASSIVE: a futex
# wake-up at every parallel region, tens of microseconds on these VMs). Training and scoring run
# few, large parallel regions, and two spinning processes on two cores starve each other: a LoRA
# fine-tune beside a second one ran 5.4x slower with libgomp's default spin than with PASSIVE,
# which alone costs it 8-27% (benchmarks/omp_wait.py, README) — so PASSIVE. Decoding runs ~120
# small matmuls a token: on 2 Zen 4 cores PASSIVE made one decode step's matmuls 2.3x (int8
# weight-only) and 3.1x (fbgemm's int8) slower than with the default spin, and llama.cpp, whose
# users run it spinning, 3x (benchmarks/decode_kernels.py, generate.py; README, issue 16) — so
# the verbs that decode spin for DECODE_SPIN turns. A value the user set wins either way.
DECODE_SPIN = "300000"  # libgomp's own default: its docs' "300,000" (a few ms)


def openmp_wait(verb: Verb, env: dict[str, str]) -> dict[str, str]:
    """The OpenMP variables to set for ``verb`` in ``env`` (nothing when the user set either)."""
    if "OMP_WAIT_POLICY" in env or "GOMP_SPINCOUNT" in env:
        return {}
    if verb.decodes:
        return {"GOMP_SPINCOUNT": DECODE_SPIN}
    return {"OMP_WAIT_POLICY": "PASSIVE"}


def _usage() -> str:
    width = max(len(v) for v in VERBS)
    lines = [
        f"oficina {__version__} — a workshop for the whole life of a language model",
        "",
        "usage: oficina VERB [ARGS] [--config FILE.yaml] [--section.field VALUE ...]",
        "       oficina VERB --help     (every setting, its default and what it does)",
        "",
        "verbs:",
    ]
    lines += [f"  {name:<{width}}  {v.help}" for name, v in VERBS.items()]
    lines += [
        "",
        "global: --version, --workspace DIR (default $OFICINA_HOME or ./workspace), --debug or "
        "OFICINA_DEBUG=1 (show tracebacks)",
    ]
    return "\n".join(lines)


# What to do about an OSError a user can cause (errno -> (exit code, advice)). 2: the path given
# is wrong; 1: the machine refused (space, permissions the user may not control).
_OS_ADVICE: dict[int, tuple[int, str]] = {
    errno.ENOSPC: (1, "no space left on the device; free some or write elsewhere"),
    errno.EDQUOT: (1, "disk quota exceeded; free some space or write elsewhere"),
    errno.EROFS: (2, "the file system is read-only; choose a writable place"),
    errno.EACCES: (2, "permission denied; choose a place you may write to"),
    errno.EPERM: (2, "operation not permitted; choose a place you may write to"),
    errno.ENOTDIR: (2, "a part of this path is a file, not a folder; choose another path"),
    errno.EISDIR: (2, "this is a folder where a file is expected; give a file name"),
    errno.EEXIST: (2, "it already exists; remove it or choose another path"),
    errno.ENOENT: (2, "no such file or folder; check the path"),
    errno.ENAMETOOLONG: (2, "the path is too long; choose a shorter one"),
}


def _debugging(flag: bool) -> bool:
    return flag or os.environ.get("OFICINA_DEBUG", "").lower() not in ("", "0", "false", "no")


def _destination(cfg: object) -> str:
    """Where a verb writes, for an OSError that names no file (a full disk fails a write())."""
    for field in ("out", "output"):
        if isinstance(getattr(cfg, field, None), str):
            return f"writing --{field} {getattr(cfg, field)} or the workspace {os.environ.get('OFICINA_HOME', 'workspace')}"
    return f"writing in the workspace {os.environ.get('OFICINA_HOME', 'workspace')}"


def _explain(e: BaseException, cfg: object = None) -> tuple[str, int] | None:
    """A failure the user can cause -> (one-line message, exit code); None for a bug."""
    if isinstance(e, UserError):
        return str(e), e.exit_code
    if isinstance(e, OSError) and e.errno is not None:
        number = e.errno
        if number == errno.EEXIST and e.filename is not None and Path(e.filename).is_file():
            number = errno.ENOTDIR  # mkdir(exist_ok=True) on a file: a folder was needed there
        code, advice = _OS_ADVICE.get(number, (1, e.strerror or "operating-system error"))
        where = e.filename if e.filename is not None else _destination(cfg)
        other = f" -> {e.filename2}" if e.filename2 is not None else ""
        return f"{where}{other}: {advice} [{errno.errorcode.get(number, number)}]", code
    mod = type(e).__module__ or ""
    if mod.startswith("jinja2"):  # jinja2 is imported only if a template was rendered
        from jinja2.exceptions import SecurityError, TemplateSyntaxError

        if isinstance(e, SecurityError):
            return (
                f"template refused by the sandbox: {e}; templates may not reach Python internals",
                2,
            )
        if isinstance(e, TemplateSyntaxError):
            where = f" ({e.name or e.filename or 'template'}, line {e.lineno})"
            return f"template syntax error{where}: {e.message}; fix the template", 2
        return f"template error: {e}; check the template (a chat template, or --template)", 2
    if type(e).__name__ == "SafetensorError":  # safetensors' one error class (Rust)
        return f"cannot read a safetensors file: {e}", 2
    return None


def _stop_on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM takes Ctrl-C's path (see errors.Stopped): save, record 'stopped', exit 0."""
    raise Stopped(signal.Signals(signum).name)


def _close_progress_bars() -> None:
    """End any open tqdm bar first, so the error is the last line, not glued to a bar."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", None) or []):
        bar.close()


def _find_verb(argv: list[str]) -> tuple[str | None, list[str]]:
    """Longest match first: 'models pull X' is the verb 'models pull' with args ['X']."""
    if len(argv) >= 2 and f"{argv[0]} {argv[1]}" in VERBS:
        return f"{argv[0]} {argv[1]}", argv[2:]
    if argv and argv[0] in VERBS:
        return argv[0], argv[1:]
    return None, argv


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:  # `oficina ... | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def _main(argv: list[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    if debug:
        argv.remove("--debug")
    if "--workspace" in argv:
        i = argv.index("--workspace")
        if i + 1 >= len(argv):
            print("oficina: error: --workspace needs a directory", file=sys.stderr)
            return 2
        os.environ["OFICINA_HOME"] = argv[i + 1]
        del argv[i : i + 2]
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("--version", "-V"):
        print(f"oficina {__version__}")
        return 0

    name, rest = _find_verb(argv)
    if name is None:
        groups = sorted({v.split()[0] for v in VERBS if " " in v})
        if argv[0] in groups:
            subs = [v.split()[1] for v in VERBS if v.startswith(argv[0] + " ")]
            print(f"oficina {argv[0]}: error: choose one of: {', '.join(subs)}", file=sys.stderr)
        else:
            print(
                f"oficina: error: unknown verb '{argv[0]}'; verbs: {', '.join(sorted({v.split()[0] for v in VERBS}))}",
                file=sys.stderr,
            )
        return 2

    verb = VERBS[name]
    if "torch" not in sys.modules:  # too late once loaded (`main()` called from Python)
        os.environ.update(openmp_wait(verb, dict(os.environ)))
    from oficina.config import parse_args

    cfg = None
    # Signals reach only the main thread; the previous handler is restored for Python callers.
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm) if main_thread else None
    try:
        module = importlib.import_module(verb.module)
        cfg_cls = getattr(module, verb.config)
        entry = getattr(module, verb.entry)
        cfg = parse_args(
            f"oficina {name}",
            cfg_cls,
            rest,
            description=verb.help + "\n\n" + inspect.cleandoc(cfg_cls.__doc__ or ""),
        )
        # One convention: an entry takes its typed config and returns the exit code. Library
        # functions that return results to Python callers (finetune, run_ladder...) stay apart.
        code = entry(cfg)
        if not isinstance(code, int):
            raise TypeError(
                f"{verb.module}.{verb.entry} returned {type(code).__name__}, not an exit code"
            )
        return code
    except Exception as e:  # a bug re-raises below; a failure the user caused gets one line
        known = _explain(e, cfg)
        if known is None or _debugging(debug):
            raise
        message, code = known
        _close_progress_bars()
        print(f"oficina {name}: error: {' '.join(message.split())}", file=sys.stderr)
        return code
    except KeyboardInterrupt as e:
        _close_progress_bars()
        resume = (
            "rerun with --resume to continue"
            if hasattr(cfg, "resume")
            else "rerun the same command to continue from there"
        )
        if isinstance(e, Stopped):  # asked to stop (systemd, docker stop): a normal end
            print(
                f"oficina {name}: stopped by {e.signame}; finished work is saved, {resume}",
                file=sys.stderr,
            )
            return 0
        print(f"\noficina {name}: interrupted; finished work is saved, {resume}", file=sys.stderr)
        return 130
    finally:
        if main_thread and previous is not None:  # None: a handler set outside Python
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
