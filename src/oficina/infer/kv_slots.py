"""Per-row KV slots: a preallocated key/value cache in which each batch row writes at its own position.

``SlotCache`` is a ``transformers`` ``Cache``: the model's attention layers call ``update`` as
they would on a ``DynamicCache``, but the keys and values live in one preallocated tensor per
layer, ``[slots, kv_heads, capacity, head_dim]``, and every row (slot) has its own length. The
caller (``oficina.infer.engine.DecodeBatch``) says before each forward what it is:

  * ``plan_decode(n)`` — one new token for each of slots ``0..n-1``, written at each slot's own
    length; attention sees ``keys[:n, :, :T]`` (a view, no copy) with ``T`` the longest row, and
    a ``[n, 1, 1, T]`` mask (a view of a preallocated boolean buffer) hides each row's unused
    tail. Position ids are the slot lengths, so a row sees the positions it would see alone;
  * ``plan_prefill(slot, q)`` — ``q`` prompt tokens of one slot, appended at its length (a chunk
    of a long prompt, so prefill can be interleaved with the decode steps of running rows).

Why slots rather than ``DynamicCache`` + left padding: a row can join between any two steps
(its prompt written into a free slot) and leave at once (the last slot is moved into its place,
so running rows stay ``0..n-1`` and the decode view stays a slice), and no step allocates a
tensor that grows with the length (``DynamicCache`` concatenates every step). Capacity grows
by reallocation, rarely (``reserve``: a row's prompt and ``RESERVE_AHEAD`` tokens when it
joins, then by half again when a row outgrows it), never per step. Every method that writes the tensors runs
in inference mode (they are inference tensors: the forward runs under ``torch.inference_mode``).

A row can start from a stored prefix (prefix caching, ``oficina.infer.prefix_cache``):
``write_prefix`` copies the prefix's per-layer keys and values into ``[slot, :, :P]``, marks
``valid[slot, :P]`` and sets the slot's length to ``P``; the caller prefills only the rest of the
prompt (``Row.fed = P``). ``read`` gives a slot's keys and values for storing.

Only full-attention models are supported (every layer sees the whole past): the 4-D mask is
given to the model as is, so sliding-window or linear-attention layers would be wrong.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

# Capacity grows in these steps so that a stream of slightly longer requests does not
# reallocate each time.
_LENGTH_QUANTUM = 128
# Room reserved for new tokens beyond a row's prompt when it joins. Reserving a row's whole
# max_new_tokens would be exact but can be huge (a long-context model asked for its whole
# context); a row that outgrows this makes the cache grow by half again (rarely: geometric).
RESERVE_AHEAD = 256


def check_supported(config) -> str | None:
    """Why the slot cache cannot serve this model (sliding-window / linear layers), or None."""
    kinds = set(getattr(config, "layer_types", None) or [])
    if kinds - {"full_attention"}:
        return f"layer types {sorted(kinds - {'full_attention'})}"
    if (
        not kinds
        and getattr(config, "sliding_window", None)
        and getattr(config, "use_sliding_window", True)
    ):
        return f"a sliding window of {config.sliding_window} tokens"
    return None


class _SlotLayer(CacheLayerMixin):
    """One layer's keys and values, ``[slots, kv_heads, capacity, head_dim]``."""

    is_sliding = False

    def __init__(self, owner: SlotCache):
        super().__init__()
        self.owner = owner

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        # Shapes and dtype come from the first keys the model produces (kv heads, head dim).
        s, n = self.owner.capacity
        self.keys = key_states.new_zeros((s, key_states.shape[1], n, key_states.shape[-1]))
        self.values = value_states.new_zeros((s, value_states.shape[1], n, value_states.shape[-1]))
        self.is_initialized = True

    def grow(self, slots: int, length: int) -> None:
        if not self.is_initialized:
            return
        old_s, heads, old_n, _ = self.keys.shape
        if slots <= old_s and length <= old_n:
            return
        for name in ("keys", "values"):
            old = getattr(self, name)
            new = old.new_zeros((max(slots, old_s), heads, max(length, old_n), old.shape[-1]))
            new[:old_s, :, :old_n] = old
            setattr(self, name, new)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        o = self.owner
        if o.mode == "decode":
            n = key_states.shape[0]
            rows, pos = o.arange[:n], o.lengths[:n]
            self.keys[rows, :, pos] = key_states[:, :, 0]
            self.values[rows, :, pos] = value_states[:, :, 0]
            return self.keys[:n, :, : o.kv_len], self.values[:n, :, : o.kv_len]
        s, start = o.slot, o.start
        end = start + key_states.shape[2]
        self.keys[s, :, start:end] = key_states[0]
        self.values[s, :, start:end] = value_states[0]
        return self.keys[s : s + 1, :, :end], self.values[s : s + 1, :, :end]

    def move(self, src: int, dst: int, length: int) -> None:
        if self.is_initialized:
            self.keys[dst, :, :length] = self.keys[src, :, :length]
            self.values[dst, :, :length] = self.values[src, :, :length]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.owner.kv_len, 0

    def get_seq_length(self) -> int:
        return self.owner.kv_len - self.owner.q_len

    def get_max_length(self) -> int:
        return -1


class SlotCache(Cache):
    """A ``Cache`` of per-row slots; see the module docstring."""

    def __init__(self, config, float_mask: bool = False):
        layers = [_SlotLayer(self) for _ in range(config.num_hidden_layers)]
        super().__init__(layers=layers)
        # sdpa takes a boolean mask (True = attend); eager attention adds the mask to the scores
        self.float_mask = float_mask
        self.capacity = (0, 0)
        self.lengths = torch.zeros(0, dtype=torch.long)  # tokens held per slot
        self.valid = torch.zeros((0, 0), dtype=torch.bool)  # [slot, position]: holds a token
        self.arange = torch.zeros(0, dtype=torch.long)
        # the forward being run (see plan_decode / plan_prefill)
        self.mode = "decode"
        self.n = self.slot = self.start = self.q_len = self.kv_len = 0

    # ------------------------------------------------------------------ capacity
    @torch.inference_mode()
    def reserve(self, slots: int, length: int) -> None:
        """Make room for ``slots`` rows of up to ``length`` tokens (reallocates only to grow)."""
        old_s, old_n = self.capacity
        if slots <= old_s and length <= old_n:
            return
        new_s = max(slots, old_s, min(2 * old_s, 256))
        new_n = max(old_n, length)
        if new_n > old_n:  # grow by at least half again, in whole quanta
            new_n = max(new_n, old_n + old_n // 2)
            new_n = -(-new_n // _LENGTH_QUANTUM) * _LENGTH_QUANTUM
        self.capacity = (new_s, new_n)
        lengths = torch.zeros(new_s, dtype=torch.long)
        lengths[:old_s] = self.lengths
        valid = torch.zeros((new_s, new_n), dtype=torch.bool)
        valid[:old_s, :old_n] = self.valid
        self.lengths, self.valid = lengths, valid
        self.arange = torch.arange(new_s)
        for layer in self.layers:
            layer.grow(new_s, new_n)

    # ------------------------------------------------------------------ slots
    @torch.inference_mode()
    def clear(self, slot: int) -> None:
        self.valid[slot].zero_()
        self.lengths[slot] = 0

    @torch.inference_mode()
    def move(self, src: int, dst: int) -> None:
        """Copy slot ``src``'s keys, values, mask and length into slot ``dst``; clear ``src``."""
        n = int(self.lengths[src])
        for layer in self.layers:
            layer.move(src, dst, n)
        self.valid[dst] = self.valid[src]
        self.lengths[dst] = n
        self.clear(src)

    @torch.inference_mode()
    def read(self, slot: int, start: int, end: int) -> torch.Tensor:
        """Keys and values of tokens ``start:end`` of ``slot``: ``[layers, 2, heads, end-start, dim]``."""
        return torch.stack(
            [
                torch.stack([layer.keys[slot, :, start:end], layer.values[slot, :, start:end]])
                for layer in self.layers
            ]
        )

    @torch.inference_mode()
    def write_prefix(self, slot: int, kv: torch.Tensor) -> None:
        """Slot ``slot`` (empty, with room reserved) starts with these ``P`` tokens' keys and values
        (``[layers, 2, heads, P, dim]``, as ``read`` gives)."""
        p = kv.shape[3]
        for i, layer in enumerate(self.layers):
            if not layer.is_initialized:  # shapes and dtype from the stored prefix
                layer.lazy_initialization(kv[i, 0][None], kv[i, 1][None])
            layer.keys[slot, :, :p] = kv[i, 0]
            layer.values[slot, :, :p] = kv[i, 1]
        self.valid[slot, :p] = True
        self.lengths[slot] = p

    # ------------------------------------------------------------------ one forward
    def _mask(self, m: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        if not self.float_mask:
            return m
        return torch.zeros(m.shape, dtype=dtype).masked_fill_(~m, torch.finfo(dtype).min)

    def plan_decode(self, n: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Slots 0..n-1 each take one token: (position ids [n, 1], 4-D attention mask)."""
        kv_len = int(self.lengths[:n].max()) + 1
        if kv_len > self.capacity[1]:
            self.reserve(self.capacity[0], kv_len)
        pos = self.lengths[:n]
        self.valid[self.arange[:n], pos] = True  # each row attends to its new token too
        self.mode, self.n, self.q_len, self.kv_len = "decode", n, 1, kv_len
        if n == 1:
            # One row sees all it holds: no mask, so attention takes the same unmasked kernel as
            # plain transformers (measured faster at batch 1); the model sizes it from the cache.
            return pos[:, None].clone(), None
        mask = self.valid[:n, None, None, : self.kv_len]
        return pos[:, None].clone(), self._mask(mask, dtype)

    def plan_prefill(
        self, slot: int, q: int, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``q`` tokens appended to ``slot``: (position ids [1, q], causal 4-D mask [1,1,q,kv])."""
        start = int(self.lengths[slot])
        end = start + q
        self.valid[slot, start:end] = True
        self.mode, self.slot, self.start, self.q_len, self.kv_len = "prefill", slot, start, q, end
        causal = torch.ones((q, end), dtype=torch.bool).tril_(diagonal=start)
        mask = (causal & self.valid[slot, :end])[None, None]
        return torch.arange(start, end)[None], self._mask(mask, dtype)

    def advance(self) -> None:
        """The planned forward ran: the rows it wrote now hold their new tokens."""
        if self.mode == "decode":
            self.lengths[: self.n] += 1
        else:
            self.lengths[self.slot] += self.q_len
