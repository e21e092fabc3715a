"""Atomic training checkpoints: weights, optimizer, scheduler, RNG states and data position.

Layout under ``<out>/checkpoints/``::

    step-000040/   weights.safetensors  (trainable parameters only: a LoRA checkpoint is small)
                   optim.pt             (optimizer + scheduler state; loaded with weights_only)
                   rng-<rank>.pt        (each rank's torch RNG state: dropout resumes exactly)
                   state.json           (step, data position, best val loss, loss history...)
    latest         "step-000040" — replaced atomically once the folder above is complete
    best.safetensors  the weights with the best validation loss so far

A folder is written as ``.tmp-step-N``, every file fsynced, then renamed: a SIGKILL at any
instant leaves either the previous checkpoint or the new one, never half of one.
Nothing here unpickles arbitrary objects: weights are safetensors, the rest loads with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from oficina.workspace import atomic_write_bytes, atomic_write_text


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
    def __init__(self, root: str | Path, rank: int = 0, world: int = 1, keep: int = 2):
        self.root = Path(root)
        self.rank, self.world, self.keep = rank, world, keep

    def _barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    # -- save -------------------------------------------------------------------------
    def save(self, step: int, model, optimizer, scheduler, state: dict) -> Path:
        name = f"step-{step:06d}"
        tmp = self.root / f".tmp-{name}"
        weights = trainable_state(model)  # collective under FSDP: every rank calls it
        optim_state = optimizer.state_dict()
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self._barrier()
        _fsync_write(tmp / f"rng-{self.rank}.pt", _torch_bytes(torch.get_rng_state()))
        if self.rank == 0:
            _fsync_write(tmp / "weights.safetensors", st_save(weights))
            _fsync_write(
                tmp / "optim.pt",
                _torch_bytes(
                    {
                        "optimizer": optim_state,
                        "scheduler": scheduler.state_dict(),
                    }
                ),
            )
            # state.json last: its presence marks a complete folder.
            _fsync_write(tmp / "state.json", json.dumps({**state, "step": step}).encode())
        self._barrier()
        final = self.root / name
        if self.rank == 0:
            fd = os.open(tmp, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
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
        load_trainable_state(model, st_load((d / "weights.safetensors").read_bytes()))
        opt = torch.load(d / "optim.pt", weights_only=True)
        optimizer.load_state_dict(opt["optimizer"])
        scheduler.load_state_dict(opt["scheduler"])
        rng = d / f"rng-{self.rank}.pt"
        if rng.is_file():
            torch.set_rng_state(torch.load(rng, weights_only=True))
        return json.loads((d / "state.json").read_text())

    def load_best(self, model) -> bool:
        p = self.root / "best.safetensors"
        if not p.is_file():
            return False
        load_trainable_state(model, st_load(p.read_bytes()))
        return True

    def clear(self) -> None:
        if self.rank == 0:
            shutil.rmtree(self.root, ignore_errors=True)
