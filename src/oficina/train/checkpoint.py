"""Atomic training checkpoints: weights, optimizer, scheduler, RNG states and data position.

Layout under ``<out>/checkpoints/``::

    step-000040/   weights.safetensors  (trainable parameters only: a LoRA checkpoint is small)
                   optim.pt             (optimizer + scheduler state; loaded with weights_only)
                   rng-<rank>.pt        (each rank's torch RNG state: dropout resumes exactly)
                   state.json           (step, data position, best val loss, loss history...)
    latest         "step-000040" — replaced atomically once the folder above is complete
    best.safetensors  the weights with the best validation loss so far

Under FSDP2 (``sharded=True``) a step folder holds ``sharded/`` instead of
``weights.safetensors`` and of the optimizer half of ``optim.pt``: a
``torch.distributed.checkpoint`` (DCP) directory where every rank writes its own shards of the
trainable parameters and of the AdamW moments (``get_state_dict`` / ``set_state_dict`` with
``full_state_dict=False``), so no rank ever holds the whole optimizer state. ``optim.pt`` then
holds the scheduler alone.

A folder is written as ``.tmp-step-N``, every file fsynced, then renamed by rank 0 after a
barrier: a SIGKILL at any instant leaves either the previous checkpoint or the new one, never
half of one. Nothing here unpickles arbitrary objects: weights are safetensors, the rest loads
with ``torch.load(weights_only=True)``; a DCP folder's ``.metadata`` pickle is read with an
unpickler that admits only DCP's own metadata classes and torch sizes/dtypes, and its non-tensor
entries (the optimizer's hyperparameters) are checked with ``weights_only=True`` first.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from oficina.errors import UserError
from oficina.models.safety import check_safetensors
from oficina.workspace import atomic_write_bytes, atomic_write_text

SHARDED = "sharded"  # the DCP sub-folder of an FSDP checkpoint


def unwrap(model):
    """The module under a DDP wrapper (and torch.compile's OptimizedModule)."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def _is_dtensor(t) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # a torch build without distributed
        return False
    return isinstance(t, DTensor)


def trainable_state(model) -> dict[str, torch.Tensor]:
    """The parameters that training changes (all of them in full training; adapters in LoRA)."""
    m = unwrap(model)
    out = {}
    for name, p in m.named_parameters():
        if p.requires_grad:
            t = p.detach()
            if _is_dtensor(t):  # an FSDP2 shard: gather the whole tensor (a collective)
                t = t.full_tensor()
            out[name] = t.to("cpu").clone().contiguous()
    return out


def load_trainable_state(model, state: dict[str, torch.Tensor]) -> None:
    m = unwrap(model)
    params = dict(m.named_parameters())
    missing = [k for k in state if k not in params]
    if missing:
        raise ValueError(f"checkpoint has parameters this model lacks: {missing[:3]}")
    with torch.no_grad():
        for name, value in state.items():
            p = params[name]
            if _is_dtensor(p):
                from torch.distributed.tensor import distribute_tensor

                # every rank holds the full tensor: each takes its own shard, no communication
                shard = distribute_tensor(
                    value.to(p.dtype), p.device_mesh, p.placements, src_data_rank=None
                )
                p.copy_(shard)
            else:
                p.copy_(value.to(p.dtype))


# ---------------------------------------------------------------------------- FSDP2 (DCP)


def _dcp_options(model):
    """Sharded (per-rank) state dicts; frozen parameters left out (a LoRA checkpoint stays
    small), in which case loading cannot be strict about them."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    frozen = any(not p.requires_grad for p in unwrap(model).parameters())
    return StateDictOptions(full_state_dict=False, ignore_frozen_params=frozen, strict=not frozen)


def _sharded_state(model, optimizer) -> dict:
    """{"model": ..., "optim": ...} of this rank's DTensor shards, keyed by parameter name."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer, options=_dcp_options(model))
    return {"model": model_sd, "optim": optim_sd}


def _metadata_unpickler():
    import pickle

    from torch.distributed.checkpoint import metadata as md

    allowed = (
        {
            ("torch.distributed.checkpoint.metadata", n)
            for n in (
                "Metadata",
                "MetadataIndex",
                "ChunkStorageMetadata",
                "TensorProperties",
                "TensorStorageMetadata",
                "BytesStorageMetadata",
                "StorageMeta",
                "_MEM_FORMAT_ENCODING",
            )
            if hasattr(md, n)
        }
        | {
            ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
            ("torch", "Size"),
            ("torch.serialization", "_get_layout"),  # looks a torch.layout up by its name
            ("collections", "OrderedDict"),
        }
        | {(m, c) for m in ("pathlib", "pathlib._local") for c in ("PosixPath", "PurePosixPath")}
    )

    class MetadataUnpickler(pickle.Unpickler):
        """Admits DCP's metadata dataclasses, ``torch.Size`` and torch dtypes/layouts: a
        tampered ``.metadata`` cannot name any other callable."""

        def find_class(self, module: str, name: str):
            if (module, name) in allowed:
                return super().find_class(module, name)
            if module == "torch":
                obj = getattr(torch, name, None)
                if isinstance(obj, torch.dtype | torch.layout | torch.memory_format):
                    return obj
            raise pickle.UnpicklingError(f"{module}.{name} has no place in a checkpoint's metadata")

    return MetadataUnpickler


def _safe_reader(path: Path):
    from torch.distributed.checkpoint import FileSystemReader

    class SafeReader(FileSystemReader):
        def read_metadata(self, *args, **kwargs):
            rank = kwargs.get("rank")
            name = ".metadata" if rank is None else f"__{rank}.metadata"
            with open(Path(self.path) / name, "rb") as f:
                _metadata_unpickler()(f).load()  # raises on anything but plain metadata
            return super().read_metadata(*args, **kwargs)

    return SafeReader(str(path))


def _safe_planner():
    from torch.distributed.checkpoint import DefaultLoadPlanner

    class SafeLoadPlanner(DefaultLoadPlanner):
        def load_bytes(self, read_item, value) -> None:
            torch.load(value, weights_only=True)  # raises on anything but plain data
            value.seek(0)
            super().load_bytes(read_item, value)

    return SafeLoadPlanner()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _torch_bytes(obj) -> bytes:
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


class Checkpointer:
    """Writes and reads ``<out>/checkpoints``; every rank calls every method (collectives).
    ``sharded``: the model is FSDP2-sharded, so weights and optimizer go through DCP."""

    def __init__(
        self, root: str | Path, rank: int = 0, world: int = 1, keep: int = 2, sharded: bool = False
    ):
        self.root = Path(root)
        self.rank, self.world, self.keep = rank, world, keep
        self.sharded = sharded

    def _barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    # -- save -------------------------------------------------------------------------
    def save(self, step: int, model, optimizer, scheduler, state: dict) -> Path:
        name = f"step-{step:06d}"
        tmp = self.root / f".tmp-{name}"
        if self.sharded:
            weights = None
            optim_state = {"scheduler": scheduler.state_dict()}
        else:
            weights = trainable_state(model)
            optim_state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            (tmp / SHARDED if self.sharded else tmp).mkdir(parents=True)
        self._barrier()
        if self.sharded:  # a collective: each rank writes its own shards, rank 0 the metadata
            import torch.distributed.checkpoint as dcp

            dcp.save(
                _sharded_state(model, optimizer),
                storage_writer=dcp.FileSystemWriter(str(tmp / SHARDED), sync_files=True),
            )
        _fsync_write(tmp / f"rng-{self.rank}.pt", _torch_bytes(torch.get_rng_state()))
        if self.rank == 0:
            if weights is not None:
                _fsync_write(tmp / "weights.safetensors", st_save(weights))
            _fsync_write(tmp / "optim.pt", _torch_bytes(optim_state))
        self._barrier()  # every rank's shards and RNG state are on disk
        final = self.root / name
        if self.rank == 0:
            # state.json last: its presence marks a complete folder.
            _fsync_write(
                tmp / "state.json",
                json.dumps({**state, "step": step, "world": self.world}).encode(),
            )
            if self.sharded:
                _fsync_dir(tmp / SHARDED)
            _fsync_dir(tmp)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            atomic_write_text(self.root / "latest", name)
            for old in sorted(self.root.glob("step-*"))[: -self.keep]:
                shutil.rmtree(old, ignore_errors=True)
            for stale in self.root.glob(".tmp-*"):
                shutil.rmtree(stale, ignore_errors=True)
        self._barrier()
        return final

    def save_best(self, model) -> None:
        weights = trainable_state(model)
        if self.rank == 0:
            atomic_write_bytes(self.root / "best.safetensors", st_save(weights))
        self._barrier()

    # -- load -------------------------------------------------------------------------
    def latest(self) -> Path | None:
        pointer = self.root / "latest"
        if pointer.is_file():
            d = self.root / pointer.read_text().strip()
            if (d / "state.json").is_file():
                return d
        done = sorted(d for d in self.root.glob("step-*") if (d / "state.json").is_file())
        return done[-1] if done else None

    def load(self, model, optimizer, scheduler) -> dict | None:
        d = self.latest()
        if d is None:
            return None
        written_sharded = (d / SHARDED).is_dir()
        if written_sharded and not self.sharded:
            raise UserError(
                f"{d} was written by FSDP (sharded weights and optimizer): resume it under "
                "torchrun with --train.parallel fsdp"
            )
        if self.sharded and not written_sharded:
            raise UserError(
                f"{d} was written without FSDP: resume it with --train.parallel ddp (or in "
                "one process)"
            )
        state = json.loads((d / "state.json").read_text())
        # The data position, the per-rank RNG files and the global batch all assume the world
        # size they were written with; another one would resume a different run.
        written_world = state.get("world", 1)
        if written_world != self.world:
            raise UserError(
                f"{d} was written by {written_world} process(es) but this run has {self.world}: "
                f"resume with the same number of processes (torchrun --nproc-per-node "
                f"{written_world})"
            )
        opt = torch.load(d / "optim.pt", weights_only=True)
        if self.sharded:  # a collective: every rank reads its own shards
            import torch.distributed.checkpoint as dcp
            from torch.distributed.checkpoint.state_dict import set_state_dict

            sd = _sharded_state(model, optimizer)  # allocates the shards DCP fills in place
            dcp.load(sd, storage_reader=_safe_reader(d / SHARDED), planner=_safe_planner())
            set_state_dict(
                model,
                optimizer,
                model_state_dict=sd["model"],
                optim_state_dict=sd["optim"],
                options=_dcp_options(model),
            )
        else:
            w = check_safetensors(d / "weights.safetensors")  # one line, not a SafetensorError
            load_trainable_state(model, st_load(w.read_bytes()))
            optimizer.load_state_dict(opt["optimizer"])
        scheduler.load_state_dict(opt["scheduler"])
        rng = d / f"rng-{self.rank}.pt"
        if rng.is_file():
            torch.set_rng_state(torch.load(rng, weights_only=True))
        return state

    def load_best(self, model) -> bool:
        p = self.root / "best.safetensors"
        if not p.is_file():
            return False
        load_trainable_state(model, st_load(check_safetensors(p).read_bytes()))
        return True

    def clear(self) -> None:
        if self.rank == 0:
            shutil.rmtree(self.root, ignore_errors=True)
