"""oficina.measure: a span's peak is its own, spans nest, parameter counts and dollars."""

from __future__ import annotations

import pytest
import torch

from oficina import measure
from oficina.measure import param_counts, peak_memory, usd

MB = 1 << 20
needs_proc = pytest.mark.skipif(
    not measure._reset_hwm(), reason="no /proc/self/clear_refs: spans fall back to ru_maxrss"
)


def _touch(mb: int) -> None:
    """Make ``mb`` MB resident, then free them (large blocks go back to the OS at once)."""
    t = torch.ones(mb * MB // 4, dtype=torch.float32)
    assert float(t[-1]) == 1.0
    del t


@needs_proc
def test_a_span_does_not_see_what_came_before_it():
    _touch(400)  # earlier work: a training rung, say
    with peak_memory() as mem:
        _touch(8)
    assert mem.method == measure.SPAN
    assert mem.peak_mb < mem.start_mb + 200  # the 400 MB before the span are not its peak


@needs_proc
def test_nested_spans_keep_the_outer_peak():
    with peak_memory() as outer:
        _touch(300)
        with peak_memory() as inner:  # resets the kernel's mark: outer must not lose the 300 MB
            _touch(8)
        _touch(8)
    assert outer.peak_mb >= outer.start_mb + 250
    assert inner.peak_mb < inner.start_mb + 200
    assert outer.peak_mb > inner.peak_mb and outer.wall_s >= inner.wall_s


def test_param_counts_counts_tied_weights_once_and_splits_trainable():
    emb = torch.nn.Embedding(10, 4)
    head = torch.nn.Linear(4, 10, bias=False)
    head.weight = emb.weight  # tied, as in SmolLM2
    model = torch.nn.Sequential(emb, torch.nn.Linear(4, 4), head)
    model[1].weight.requires_grad_(False)
    assert param_counts(model) == (40 + 16 + 4, 40 + 4)


def test_usd():
    assert usd(1800, 2.0) == pytest.approx(1.0)
    assert usd(0, 3.0) == 0.0


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_follows_the_cpu_and_keeps_an_explicit_choice(monkeypatch, native):
    monkeypatch.setattr(measure, "_NATIVE_BF16", True)  # AVX-512 BF16 alone decides nothing
    monkeypatch.setattr(measure, "_FAST_BF16", native)
    assert measure.auto_precision("auto") == ("bf16" if native else "fp32")
    assert measure.auto_dtype("auto") == ("bfloat16" if native else "float32")
    for explicit in ("bf16", "fp32"):
        assert measure.auto_precision(explicit) == explicit
    for explicit in ("bfloat16", "float32"):
        assert measure.auto_dtype(explicit) == explicit


def test_fast_bf16_is_amx_or_an_amd_cpu_with_avx512_bf16(monkeypatch):
    # Measured: bf16 wins with AMX tiles, and on AMD Zen 4 (AVX-512 BF16: a LoRA step 1.58x
    # float32's speed); AVX-512 BF16 on an Intel Xeon without AMX ran it 0.57x.
    monkeypatch.setattr(measure, "_FAST_BF16", None)
    text = open("/proc/cpuinfo").read()
    flags = text.split()
    amd = "AuthenticAMD" in text
    assert measure.cpu_vendor() in text and measure.cpu_vendor()
    assert measure.fast_bf16() == ("amx_tile" in flags or (amd and "avx512_bf16" in flags))
    # The rule, on every kind of CPU (what this one is not, too): AMX decides alone; without it,
    # an AMD CPU that computes bf16 does, an Intel one does not.
    import torch

    for amx, vendor, native, want in [
        (True, "GenuineIntel", True, True),
        (False, "GenuineIntel", True, False),
        (False, "AuthenticAMD", True, True),
        (False, "AuthenticAMD", False, False),  # AVX2 only: bf16 is emulated
        (False, "", True, False),  # not measured
    ]:
        monkeypatch.setattr(measure, "_FAST_BF16", None)
        monkeypatch.setattr(measure, "_NATIVE_BF16", native)
        monkeypatch.setattr(measure, "cpu_vendor", lambda v=vendor: v)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda a=amx: a)
        assert measure.fast_bf16() is want, (amx, vendor, native)


def test_native_bf16_agrees_with_the_cpu_flags(monkeypatch):
    # oneDNN runs bf16 natively with AVX-512 BF16 or AMX; the 2-core AVX2 EPYC has neither.
    monkeypatch.setattr(measure, "_NATIVE_BF16", None)
    flags = open("/proc/cpuinfo").read().split()
    if "avx512_bf16" in flags or "amx_bf16" in flags:
        assert measure.native_bf16()
    elif "avx512f" not in flags:
        assert not measure.native_bf16()
