"""C++ kernels of Oficina's own ops, compiled once per machine and loaded into torch.

``load("int8_op.cpp")`` compiles a C++ source of this package (one compiler call with
``torch.utils.cpp_extension``'s include and library paths: no ninja, no Python module) into a
shared library cached under ``$TORCH_EXTENSIONS_DIR/oficina`` (default
``~/.cache/torch_extensions/oficina``), named by a hash of the source, torch's version and the
flags, and loads it with ``torch.ops.load_library`` (its ``TORCH_LIBRARY_IMPL`` blocks register
kernels). ``make setup`` builds them; without that the first ``load`` compiles (~20-40 s on 2
busy cores). Without a compiler, or if the build fails, ``load`` returns ``None`` and the caller
keeps its Python kernel: the C++ is an optimisation, never a requirement.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import torch

_LOADED: dict[str, Path | None] = {}


def cache_dir() -> Path:
    """Where the compiled libraries are kept (``$TORCH_EXTENSIONS_DIR/oficina``)."""
    base = os.environ.get("TORCH_EXTENSIONS_DIR") or Path.home() / ".cache" / "torch_extensions"
    return Path(base) / "oficina"


# Extra flags per source. row_linear.cpp is a memory-bound loop that wants this CPU's widest
# vectors (AVX-512 where present): built for the machine it runs on, so the cache key below
# names the CPU's flags (a home shared by two kinds of CPU keeps one library for each).
FLAGS = {"row_linear.cpp": ["-O3", "-march=native", "-fopenmp"]}


def _cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    return next((ln for ln in text.splitlines() if ln.startswith("flags")), "")


def _command(source: Path, out: Path) -> list[str]:
    from torch.utils import cpp_extension

    cxx = os.environ.get("CXX", "c++")
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    cmd = [cxx, "-O2", *FLAGS.get(source.name, []), "-shared", "-fPIC", "-std=c++17"]
    cmd += [f"-D_GLIBCXX_USE_CXX11_ABI={abi}"]
    cmd += [f"-I{p}" for p in cpp_extension.include_paths()]
    cmd += [str(source), "-o", str(out)]
    for p in cpp_extension.library_paths():
        cmd += [f"-L{p}", f"-Wl,-rpath,{p}"]
    return cmd + ["-lc10", "-ltorch_cpu"]


def library_path(name: str) -> Path:
    """The cached library of the package's C++ source ``name`` (built or not)."""
    source = Path(__file__).with_name(name)
    key = hashlib.sha256(source.read_bytes())
    key.update(" ".join([torch.__version__, sys.version, *_command(source, Path())]).encode())
    if "-march=native" in FLAGS.get(name, []):
        key.update(_cpu_flags().encode())
    return cache_dir() / f"{source.stem}-{key.hexdigest()[:16]}.so"


def build(name: str) -> Path:
    """Compile ``name`` unless its cached library exists; the library's path.

    Written to a temporary file and renamed into place, so concurrent builds (test workers)
    never load a half-written library. Raises ``RuntimeError`` with the compiler's message.
    """
    out = library_path(name)
    if out.is_file():
        return out
    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        raise RuntimeError(f"no C++ compiler ({cxx!r} not found; set CXX)")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    try:
        cmd = _command(Path(__file__).with_name(name), Path(tmp))
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"compiling {name} failed:\n{done.stderr[-2000:]}")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def load(name: str) -> Path | None:
    """Build (once per machine) and load the C++ source ``name`` into torch (once per process);
    its library's path, or ``None`` when it cannot be built or loaded here."""
    if name not in _LOADED:
        try:
            path = build(name)
            torch.ops.load_library(str(path))
        except (RuntimeError, OSError) as e:
            warnings.warn(
                f"oficina: {name} not used, its Python twin runs instead: {e}", stacklevel=2
            )
            path = None
        _LOADED[name] = path
    return _LOADED[name]
