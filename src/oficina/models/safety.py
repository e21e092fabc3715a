"""The one loading gate: every weight file Oficina hands to torch, transformers or PEFT passes here.

A suffix proves nothing (a pickle renamed ``model.safetensors`` is still a pickle, and a decoy
``x.safetensors`` beside ``pytorch_model.bin`` does not make the folder safe), so the gate works
from what the loader *will* read:

  * a model folder: ``model.safetensors``, else every shard named by ``model.safetensors.index.json``;
  * a PEFT adapter folder: ``adapter_model.safetensors``;

and each of those files must be a well-formed safetensors file: an 8-byte little-endian header
length, a JSON header whose tensors have a known dtype, a shape, and data offsets that tile the
rest of the file exactly (no holes, no overlap, nothing past the end), and the ``safetensors``
library must open it. Anything else — pickle weights (``.bin``, ``.pt``, ``.ckpt``), an index
pointing outside the folder or at a pickle, a truncated file, a header lying about sizes — is
refused with one line naming the file. Pickle weights from a trusted source can be converted
once with ``oficina models pull DIR --allow-pickle`` (the only place that opts in).

    from oficina.models.safety import check_model_dir, check_adapter_dir
    files = check_model_dir(path)          # -> the safetensors files a loader will read
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from oficina.errors import NotFound, UserError

MODEL_FILE = "model.safetensors"
MODEL_INDEX = "model.safetensors.index.json"
ADAPTER_FILE = "adapter_model.safetensors"
# Weight files the Hugging Face loaders fall back to when no safetensors are found: all pickles
# (or formats Oficina does not read). Named in the refusal so the user sees what was found.
PICKLE_MODEL_FILES = (
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "tf_model.h5",
    "model.ckpt.index",
    "flax_model.msgpack",
)
PICKLE_ADAPTER_FILES = ("adapter_model.bin", "adapter_model.pt", "adapter_model.pth")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")

# Bytes per element of every dtype the safetensors format defines (sub-byte ones as fractions).
DTYPE_BYTES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "F8_E8M0": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
    "C64": 8,
    "F4": 0.5,
    "F6_E2M3": 0.75,
    "F6_E3M2": 0.75,
}
MAX_HEADER = 100 * 1024 * 1024  # the safetensors library's own limit

PICKLE_HINT = (
    "only safetensors weights are loaded, because pickle files can run code when read; "
    "convert it (for a source you trust: oficina models pull DIR --allow-pickle)"
)


class UnsafeWeightsError(UserError):
    """A weight file the gate refuses (pickle, malformed or lying safetensors)."""

    exit_code = 2


def _refuse(path: Path, why: str, hint: str = "") -> UnsafeWeightsError:
    return UnsafeWeightsError(f"refusing {path}: {why}" + (f"; {hint}" if hint else ""))


def check_safetensors(path: str | Path) -> Path:
    """Raise ``UnsafeWeightsError`` unless ``path`` is a complete, consistent safetensors file."""
    path = Path(path)
    if not path.is_file():
        raise _refuse(path, "the weight file is missing")
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise _refuse(path, f"not a safetensors file ({size} bytes, no header)")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER or 8 + n > size:
            raise _refuse(
                path,
                "not a safetensors file (its first 8 bytes are not a header length that fits the file)",
            )
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise _refuse(path, "not a safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise _refuse(path, "not a safetensors file (its header is not a JSON object)")
    data_len = size - 8 - n
    spans = []
    for name, t in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(t, dict) or {"dtype", "shape", "data_offsets"} - t.keys():
            raise _refuse(path, f"tensor {name!r} lacks dtype/shape/data_offsets")
        shape, offs, dtype = t["shape"], t["data_offsets"], t["dtype"]
        if dtype not in DTYPE_BYTES:
            raise _refuse(path, f"tensor {name!r} has an unknown dtype {dtype!r}")
        if not (
            isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)
        ) or not (
            isinstance(offs, list)
            and len(offs) == 2
            and all(isinstance(o, int) and o >= 0 for o in offs)
        ):
            raise _refuse(path, f"tensor {name!r} has a malformed shape or data_offsets")
        nbytes = math.prod(shape) * DTYPE_BYTES[dtype]
        if offs[1] - offs[0] != nbytes:
            raise _refuse(
                path,
                f"tensor {name!r} claims {offs[1] - offs[0]} bytes but {dtype}{shape} needs {nbytes:g}",
            )
        spans.append((offs[0], offs[1], name))
    end = 0
    for b, e, name in sorted(spans):
        if b != end:
            raise _refuse(path, f"tensor {name!r} does not start where the previous one ends")
        end = e
    if end != data_len:
        raise _refuse(
            path,
            f"the header describes {end} bytes of tensors but the file holds {data_len} "
            "(truncated or padded)",
        )
    try:  # the reference parser too: whatever it refuses, transformers would fail on
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy"):
            pass
    except Exception as e:  # its errors are one untyped class; the message says what is wrong
        raise _refuse(path, f"the safetensors library cannot open it ({e})") from None
    return path


def _pickles(folder: Path, names: tuple[str, ...]) -> list[Path]:
    found = [folder / n for n in names if (folder / n).exists()]
    found += sorted(f for f in folder.iterdir() if f.suffix in PICKLE_SUFFIXES and f not in found)
    return found


def model_weight_files(folder: str | Path) -> list[Path]:
    """The safetensors files a Hugging Face loader reads from ``folder`` (not yet checked)."""
    folder = Path(folder)
    if (folder / MODEL_FILE).exists():
        return [folder / MODEL_FILE]
    index = folder / MODEL_INDEX
    if not index.is_file():
        return []
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise _refuse(index, "not a valid index (no weight_map of tensor -> shard file)") from None
    files = []
    for s in shards:
        p = Path(s) if isinstance(s, str) else None
        if p is None or p.is_absolute() or len(p.parts) != 1 or p.name in ("", ".", ".."):
            raise _refuse(index, f"shard {s!r} is not a file name inside {folder}")
        if p.suffix != ".safetensors":
            raise _refuse(folder / p, f"{MODEL_INDEX} points at a shard that is not .safetensors")
        files.append(folder / p)
    return files


def check_model_dir(
    folder: str | Path, allow_pickle: bool = False, require: bool = True
) -> list[Path]:
    """The checked safetensors files a model load will read; refuse the folder otherwise.

    ``allow_pickle`` (only ``models pull --allow-pickle``) lets a folder without safetensors
    through, so that it can be converted; safetensors files present are still checked.
    ``require=False`` accepts a folder with no weight file at all (a config to size, a
    tokenizer to read): there is nothing in it to load.
    """
    folder = Path(folder)
    files = model_weight_files(folder)
    if not files:
        bad = _pickles(folder, PICKLE_MODEL_FILES)
        if allow_pickle or not (bad or require):
            return []
        if bad:
            raise _refuse(bad[0], "pickle weights", PICKLE_HINT)
        raise _refuse(folder, f"no {MODEL_FILE} or {MODEL_INDEX} (no weights to load)")
    return [check_safetensors(f) for f in files]


def check_adapter_dir(folder: str | Path) -> Path:
    """A PEFT adapter folder whose weights are a checked ``adapter_model.safetensors``."""
    folder = Path(folder).expanduser()
    if not folder.exists():
        raise NotFound(f"adapter folder not found: {folder}")
    if not (folder / "adapter_config.json").is_file():
        raise UserError(f"{folder} is not a PEFT adapter directory (no adapter_config.json)")
    if not (folder / ADAPTER_FILE).exists():
        bad = _pickles(folder, PICKLE_ADAPTER_FILES)
        if bad:
            raise _refuse(
                bad[0],
                "pickle adapter weights; only adapter_model.safetensors is loaded, because pickle "
                "files can run code when read",
                "save the adapter with safetensors (PEFT's save_pretrained does by default)",
            )
        raise _refuse(folder, f"no {ADAPTER_FILE} (no adapter weights to load)")
    check_safetensors(folder / ADAPTER_FILE)
    return folder


@contextmanager
def load_errors(path: str | Path, what: str = "model") -> Iterator[None]:
    """Turn a loader's failure on a broken folder into one line naming it (exit 2).

    transformers and PEFT report a malformed config, tokenizer or adapter, an unknown
    architecture or weights that do not fit the config as OSError/ValueError/RuntimeError with
    no errno; the user can only fix the folder. An OSError with an errno (permission, a missing
    disk) is left to the CLI, which names the errno's remedy; ``--debug`` shows the original.
    """
    try:
        yield
    except UserError:
        raise
    except OSError as e:
        if e.errno is not None:
            raise
        raise _load_error(path, what, e) from e
    except (ValueError, RuntimeError, KeyError, ImportError) as e:
        raise _load_error(path, what, e) from e


def _load_error(path: str | Path, what: str, e: BaseException) -> UserError:
    text = str(e).strip()
    first = text.splitlines()[0][:300] if text else type(e).__name__
    return UserError(
        f"cannot load the {what} in {path}: {first}; check that it is a complete, matching "
        f"Hugging Face {what} folder (--debug shows the details)",
        exit_code=2,
    )
