"""Per-row KV slots: a preallocated key/value cache in which each batch row writes at its own position.

``SlotCache`` is a ``transformers`` ``Cache``: the model's attention layers call ``update`` as
they would on a ``DynamicCache``, but the keys and values live in one preallocated tensor per
layer, ``[slots, kv_heads, capacity, head_dim]``, and every row (slot) has its own length. The
caller (``oficina.infer.engine.DecodeBatch``) says before each forward what it is:

  * ``plan_decode(n)`` — one new token for each of slots ``0..n-1``, written at each slot's own
    length; attention sees ``keys[:n, :, :T]`` (a view, no copy) with ``T`` the longest row, and
    a ``[n, 1, 1, T]`` mask (a view of a preallocated boolean buffer) hides each row's unused
    tail. Position ids are the slot lengths, so a row sees the positions it would see alone;
  * ``plan_prefill(slots, qs)`` — ``qs[i]`` prompt tokens of slot ``slots[i]``, appended at its
    length, for several slots in one forward (a burst of new prompts prefilled together, or a
    chunk of a long prompt, so prefill can be interleaved with the decode steps of running rows).
    Rows are **left-padded** to the longest ``q``, so every row's last real token is the
    forward's last position (``logits_to_keep=1`` gives each row its next-token logits). Row i's
    real token j goes to position ``start_i + j`` of its slot (its position id too); its pad
    tokens are written *after* its real ones, at positions no mask marks valid, so they are
    overwritten later and nobody attends to them. A pad query attends to its row's real tokens
    (a query that sees nothing would give NaN); its output is thrown away.

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
        # prefill: query t of row b goes to position write_pos[b, t] of slot slots[b]
        rows, pos = o.slots[:, None], o.write_pos
        self.keys[rows, :, pos] = key_states.transpose(1, 2)
        self.values[rows, :, pos] = value_states.transpose(1, 2)
        if o.first >= 0:  # consecutive slots (the usual case): a view, no copy
            f, m = o.first, len(o.slots)
            return self.keys[f : f + m, :, : o.kv_len], self.values[f : f + m, :, : o.kv_len]
        return self.keys[o.slots, :, : o.kv_len], self.values[o.slots, :, : o.kv_len]

    def move(self, src: int, dst: int, length: int) -> None:
        if self.is_initialized:
            self.keys[dst, :, :length] = self.keys[src, :, :length]
            self.values[dst, :, :length] = self.values[src, :, :length]

    def swap(self, a: int, b: int, length: int) -> None:
        if self.is_initialized:
            for t in (self.keys, self.values):
                t[[a, b], :, :length] = t[[b, a], :, :length]  # the right side is a copy

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
        self.n = self.q_len = self.kv_len = 0
        # prefill: the slots written, first slot if they are consecutive (else -1), and for
        # each row the [q_len] positions its queries are written at (pads after its real tokens)
        self.slots = torch.zeros(0, dtype=torch.long)
        self.first = -1
        self.qs = torch.zeros(0, dtype=torch.long)
        self.write_pos = torch.zeros((0, 0), dtype=torch.long)

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
    def swap(self, a: int, b: int) -> None:
        """Exchange slots ``a`` and ``b`` (keys, values, mask, length)."""
        n = int(max(self.lengths[a], self.lengths[b]))
        for layer in self.layers:
            layer.swap(a, b, n)
        self.valid[[a, b]] = self.valid[[b, a]]
        self.lengths[[a, b]] = self.lengths[[b, a]]

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
        self, slots: list[int], qs: list[int], dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``qs[i]`` tokens appended to slot ``slots[i]``, left-padded to ``Q = max(qs)``:
        (position ids ``[m, Q]``, 4-D mask ``[m, 1, Q, kv]``); see the module docstring."""
        m, q = len(slots), max(qs)
        sl = torch.tensor(slots, dtype=torch.long)
        qt = torch.tensor(qs, dtype=torch.long)
        start = self.lengths[sl]
        need = int((start + q).max())  # pads are written after each row's real tokens
        if need > self.capacity[1]:
            self.reserve(self.capacity[0], need)
        pad = (q - qt)[:, None]  # [m, 1]
        t = torch.arange(q)[None]  # [1, Q]
        real = t >= pad  # [m, Q]: query t of row b is a real token
        # real query t is token t - pad of the row's chunk, at position start + t - pad; pad
        # query t is written at start + q_b + t (after the real ones: never marked valid)
        write = torch.where(real, start[:, None] + t - pad, start[:, None] + qt[:, None] + t)
        end = start + qt
        kv_len = int(end.max())
        k = torch.arange(kv_len)[None]
        new = (k >= start[:, None]) & (k < end[:, None])  # [m, kv]: the tokens written now
        self.valid[sl, :kv_len] |= new
        # a real query sees its row's valid tokens up to its own position; a pad query (its
        # output is thrown away) sees all the row's valid tokens, so it never sees nothing
        last = torch.where(real, write, (end - 1)[:, None])  # [m, Q]
        mask = (k[:, None, :] <= last[:, :, None]) & self.valid[sl, None, :kv_len]
        self.mode, self.n, self.q_len, self.kv_len = "prefill", m, q, kv_len
        self.slots, self.qs, self.write_pos = sl, qt, write
        self.first = slots[0] if slots == list(range(slots[0], slots[0] + m)) else -1
        # a pad's position id repeats its row's last real one (any in-range value will do)
        return last, self._mask(mask[:, None], dtype)

    def advance(self) -> None:
        """The planned forward ran: the rows it wrote now hold their new tokens."""
        if self.mode == "decode":
            self.lengths[: self.n] += 1
        else:
            self.lengths[self.slots] += self.qs
