"""Prefix caching: the keys and values of prompt prefixes, computed once and reused by later prompts.

The few-shot and RAG rungs, ``oficina batch`` and ``oficina eval`` send the same long instruction
and examples again and again; prefilling them is most of a request's time to first token. A
``PrefixCache`` keeps the KV of prompts in **blocks** of ``block`` tokens (as vLLM's automatic
prefix caching does): block ``i`` of a prompt is keyed by a hash chained over the model's
identity and every token id up to the end of that block, so a block is found only when the
whole prefix before it matches, and a new prompt reuses the longest run of cached blocks it
starts with. ``DecodeBatch`` (``oficina.infer.engine``) looks up a prompt when it takes a slot,
copies the blocks into the slot (``SlotCache.write_prefix``) and prefills only the rest; when a
prompt's prefill ends it stores the full blocks not cached yet (``SlotCache.read``). The scoring
kernel (``oficina.infer.scoring``: eval and the ladder's label log-likelihoods) does the same
with its contexts, so scoring and generation reuse each other's blocks.

Memory is bounded in bytes with least-recently-used eviction. A lookup touches the blocks it
uses last-first, so a prefix's first block is always more recent than the blocks after it and
the tail of a chain is evicted before its head (a block whose head is gone can never be found).

One cache is shared by every engine of the process (``shared_prefix_cache``; its size comes from
``OFICINA_PREFIX_CACHE_MB``, 0 turns it off): entries of different models never meet because
the key starts with ``Engine.model_hash`` (weights, config, tokenizer, adapter, dtype).
"""

from __future__ import annotations

import collections
import hashlib
import os
import threading
from collections.abc import Callable, Sequence

import torch

from oficina.errors import UserError

# Tokens per block: a prompt reuses a cached prefix in multiples of this many tokens.
BLOCK = 64
DEFAULT_MB = 256


class PrefixCache:
    """Block-granular KV of prompt prefixes, LRU-bounded to ``max_bytes``; see the module docstring.

    A block's value is one tensor ``[layers, 2 (keys, values), kv_heads, block, head_dim]``.
    Thread-safe: the server's scheduler and request threads may share it.
    """

    def __init__(self, max_bytes: int = DEFAULT_MB << 20, block: int = BLOCK):
        if block < 1:
            raise ValueError(f"block must be >= 1, got {block}")
        self.max_bytes = max(0, int(max_bytes))
        self.block = int(block)
        self._blocks: collections.OrderedDict[bytes, torch.Tensor] = collections.OrderedDict()
        self._lock = threading.Lock()
        self.bytes = 0
        self.hits = 0  # lookups that reused at least one block
        self.misses = 0  # lookups that could have reused a block but found none
        self.hit_tokens = 0  # prompt tokens not prefilled thanks to the cache
        self.evictions = 0

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def __len__(self) -> int:
        return len(self._blocks)

    def _chain(self, namespace: str, ids: Sequence[int], n_blocks: int) -> list[bytes]:
        """Keys of the first ``n_blocks`` blocks of ``ids``: each hashes the previous key + its tokens."""
        keys, prev = [], hashlib.sha256(namespace.encode()).digest()
        b = self.block
        for i in range(n_blocks):
            h = hashlib.sha256(prev)
            h.update(",".join(map(str, ids[i * b : (i + 1) * b])).encode())
            prev = h.digest()
            keys.append(prev)
        return keys

    def lookup(self, namespace: str, ids: Sequence[int]) -> tuple[int, torch.Tensor | None]:
        """The longest cached block-aligned prefix of ``ids`` that leaves at least one token to
        prefill (its logits give the first new token): ``(P, kv [layers, 2, heads, P, dim])``,
        or ``(0, None)``."""
        n = (len(ids) - 1) // self.block
        if not self.enabled or n == 0:
            return 0, None
        with self._lock:
            found = []
            for k in self._chain(namespace, ids, n):
                kv = self._blocks.get(k)
                if kv is None:
                    break
                found.append((k, kv))
            for k, _ in reversed(found):  # the head stays the most recent (see the docstring)
                self._blocks.move_to_end(k)
            if not found:
                self.misses += 1
                return 0, None
            self.hits += 1
            p = len(found) * self.block
            self.hit_tokens += p
        kv = torch.cat([kv for _, kv in found], dim=3) if len(found) > 1 else found[0][1]
        return p, kv

    def cached_tokens(self, namespace: str, ids: Sequence[int]) -> int:
        """How many leading tokens of ``ids`` (whole blocks) are cached; counts and recency
        are left as they are (a check, not a use)."""
        if not self.enabled:
            return 0
        with self._lock:
            n = 0
            for k in self._chain(namespace, ids, len(ids) // self.block):
                if k not in self._blocks:
                    break
                n += self.block
        return n

    def store(
        self, namespace: str, ids: Sequence[int], read: Callable[[int, int], torch.Tensor]
    ) -> None:
        """Cache every full block of ``ids`` not cached yet; ``read(start, end)`` gives the KV of
        tokens ``start:end`` as ``[layers, 2, heads, end - start, dim]``, a tensor the cache may keep
        (called only for those blocks)."""
        n = len(ids) // self.block
        if not self.enabled or n == 0:
            return
        keys = self._chain(namespace, ids, n)
        with self._lock:
            missing = [i for i, k in enumerate(keys) if k not in self._blocks]
        # read() gives fresh tensors (SlotCache.read stacks copies): kept as they are
        new = {keys[i]: read(i * self.block, (i + 1) * self.block).contiguous() for i in missing}
        with self._lock:
            for k, kv in new.items():
                size = kv.numel() * kv.element_size()
                if size > self.max_bytes or k in self._blocks:
                    continue
                self._blocks[k] = kv
                self.bytes += size
            for k in reversed(keys):
                if k in self._blocks:
                    self._blocks.move_to_end(k)
            while self.bytes > self.max_bytes:
                _, old = self._blocks.popitem(last=False)
                self.bytes -= old.numel() * old.element_size()
                self.evictions += 1

    def clear(self) -> None:
        with self._lock:
            self._blocks.clear()
            self.bytes = 0

    def stats(self) -> dict:
        """Counters for ``/health`` and benchmarks."""
        return {
            "blocks": len(self._blocks),
            "bytes": self.bytes,
            "max_bytes": self.max_bytes,
            "block_tokens": self.block,
            "hits": self.hits,
            "misses": self.misses,
            "hit_tokens": self.hit_tokens,
            "evictions": self.evictions,
        }


_SHARED: PrefixCache | None = None
_SHARED_LOCK = threading.Lock()


def shared_prefix_cache() -> PrefixCache:
    """The process's one prefix cache, sized by ``OFICINA_PREFIX_CACHE_MB`` (default 256; 0 = off)."""
    global _SHARED
    with _SHARED_LOCK:
        if _SHARED is None:
            raw = os.environ.get("OFICINA_PREFIX_CACHE_MB", str(DEFAULT_MB))
            try:
                mb = float(raw)
            except ValueError:
                mb = -1
            if not (mb >= 0):
                raise UserError(
                    f"OFICINA_PREFIX_CACHE_MB must be a number of megabytes >= 0 (0 turns the "
                    f"prefix cache off), got {raw!r}",
                    exit_code=2,  # a setting, like every other configuration error
                )
            _SHARED = PrefixCache(int(mb * (1 << 20)))
        return _SHARED
