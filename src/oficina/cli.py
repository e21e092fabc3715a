"""The ``oficina`` command: one registry maps each verb to one module's config and entry function.

A verb stays thin: the CLI parses flags into the verb's typed config (``oficina.config``), and
calls ``entry(cfg)``. Modules are imported only for the verb being run, so ``--help`` is fast.

    oficina --help
    oficina size mini
    oficina generate smollm2-135m-instruct --prompt "What is the capital of France?"
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass

from oficina import __version__
from oficina.errors import UserError


@dataclass(frozen=True)
class Verb:
    module: str
    config: str  # class name in module
    entry: str  # function name in module: entry(cfg) -> int | None
    help: str


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
    ),
    "chat": Verb(
        "oficina.infer.generate", "ChatConfig", "chat", "chat with a model in the terminal"
    ),
    "batch": Verb(
        "oficina.infer.batch",
        "BatchConfig",
        "run",
        "offline bulk inference over a JSONL, cached in SQLite",
    ),
    "batch lookup": Verb(
        "oficina.infer.batch",
        "LookupConfig",
        "lookup",
        "answer from the bulk-inference cache alone",
    ),
    "quantize": Verb(
        "oficina.infer.quantize",
        "QuantizeConfig",
        "run",
        "int8 (PyTorch CPU) or GGUF (llama.cpp) with size, speed and quality",
    ),
    "serve": Verb(
        "oficina.serve.app",
        "ServeConfig",
        "run",
        "OpenAI-compatible HTTP server with a web chat and feedback",
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
        "pretrain",
        "pretrain from a preset, or continue pretraining a model",
    ),
    "finetune": Verb(
        "oficina.train.recipes",
        "FinetuneConfig",
        "finetune",
        "supervised fine-tuning: full or LoRA; classification heads",
    ),
    "distill": Verb(
        "oficina.train.recipes",
        "DistillConfig",
        "distill",
        "knowledge distillation from a teacher into a smaller student",
    ),
    "merge": Verb(
        "oficina.train.recipes",
        "MergeConfig",
        "merge",
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
        "oficina.rag.ask", "AskConfig", "run", "answer from your documents with numbered citations"
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
        "oficina.evals.ladder",
        "LadderConfig",
        "run",
        "the main job: which adaptation is cheapest for your quality bar",
    ),
}


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
        "global: --version, --workspace DIR (default $OFICINA_HOME or ./workspace), --debug (show tracebacks)",
    ]
    return "\n".join(lines)


def _find_verb(argv: list[str]) -> tuple[str | None, list[str]]:
    """Longest match first: 'models pull X' is the verb 'models pull' with args ['X']."""
    if len(argv) >= 2 and f"{argv[0]} {argv[1]}" in VERBS:
        return f"{argv[0]} {argv[1]}", argv[2:]
    if argv and argv[0] in VERBS:
        return argv[0], argv[1:]
    return None, argv


def main(argv: list[str] | None = None) -> int:
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
    from oficina.config import parse_args

    try:
        module = importlib.import_module(verb.module)
        cfg_cls = getattr(module, verb.config)
        entry = getattr(module, verb.entry)
        cfg = parse_args(
            f"oficina {name}",
            cfg_cls,
            rest,
            description=verb.help + "\n\n" + (cfg_cls.__doc__ or "").strip(),
        )
        code = entry(cfg)
        # Entries return an exit code, or a summary dict (the same function serves Python callers).
        return code if isinstance(code, int) else 0
    except UserError as e:
        if debug:
            raise
        print(f"oficina {name}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"\noficina {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
