"""Matrix-vector kernels for batch-1 decoding, on SmolLM2-135M's Linear shapes, in one run.

    .venv/bin/python benchmarks/decode_kernels.py [--rounds 5] [--steps 3] [--only NAME ...]

A decode step of one row multiplies a single activation row (M=1) by every weight matrix once:
the step is bound by how fast a kernel streams the weights. For each of SmolLM2's shapes
(q/o 576->576, k/v 576->192, gate/up 576->1536, down 1536->576, 30 layers each, and lm_head
576->49152 once) this times every candidate on the same random weights, and prints the time
per shape and the time of one whole step's matmuls (each shape's time x how often a step runs
it), with the weight bytes that step reads and the bandwidth that implies. Candidates:

* ``f32 linear`` — ``F.linear`` in float32 (MKL's sgemv: what the eager engine runs);
* ``f32 column-major`` — the same call on the weight stored column-major (a contiguous
  ``W.T``): MKL then runs the GEMV as scaled additions of columns (``oficina.infer.layout``);
* ``f32 mkl packed`` — MKL's prepacked sgemm (``torch.ops.mkl._mkl_linear``), what inductor
  uses for float32 linears with ``freezing=True`` and a static batch;
* ``f32 onednn packed`` — oneDNN's prepacked linear (``mkldnn._linear_pointwise``), what
  inductor uses for bf16 and dynamic shapes;
* ``f32 row kernel`` — ``oficina.infer.row_linear``'s op (a dot product per weight row, this
  CPU's widest vectors, rows split across threads): what the engine's one-row calls run;
* ``bf16 linear`` / ``bf16 onednn packed`` / ``bf16 row kernel`` — the same in bfloat16 (half
  the bytes);
* ``int8 weight-only`` — ``torch._weight_int8pack_mm`` with bf16 activations (the int8
  directory's kernel before issue 16);
* ``int8 row kernel`` — ``oficina.infer.row_linear``'s int8 op: float32 activations, one dot
  product per int8 row times its scale (``Int8Linear``'s one-row call since issue 16's row
  kernel);
* ``int8 x int8 _int_mm`` — activations quantized per token (symmetric, ``max|x| / 127``),
  ``torch._int_mm`` (int32 accumulation, oneDNN's VNNI kernel) and both scales applied;
* ``int8 _int_mm alone`` — ``torch._int_mm`` on activations quantized beforehand, unscaled:
  the kernel's own time, what a compiled step fusing the quantization could at best reach
  (its error column is meaningless: the output is not rescaled);
* ``int8 onednn qlinear`` — oneDNN's prepacked int8 linear (``onednn.qlinear_pointwise``, what
  inductor lowers PT2E-quantized linears to), uint8 activations quantized per token;
* ``int8 fbgemm dynamic`` — ``quantized::linear_dynamic`` on fbgemm-prepacked per-channel
  weights (torch.ao's dynamic int8: the raw op, not the deprecated ``torch.ao`` module API).

Every layer gets its own random weights, as in the model, so a step streams them from memory
rather than from cache (the model's 30 layers of q_proj alone outgrow the L2 cache). A
measurement runs ``--steps`` steps' worth of one shape's calls; every figure is the median over
``--rounds`` rounds, each visiting every candidate in turn, so load on the shared machine
spreads over all of them: compare the ratios. Each candidate's output is checked against its reference
first (float: float64 ``F.linear``; int8: the dequantized weights), and its relative error
printed; a candidate whose op is missing in this torch build is reported and skipped.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from _machine import machine, openmp_as

OPENMP = openmp_as("generate")  # as `oficina generate` runs: before torch loads

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

# (name, out N, in K, times per decode step) for SmolLM2-135M: 30 layers, 9 query / 3 kv heads
SHAPES = [
    ("q_proj/o_proj 576->576", 576, 576, 60),
    ("k_proj/v_proj 576->192", 192, 576, 60),
    ("gate/up 576->1536", 1536, 576, 60),
    ("down 1536->576", 576, 1536, 30),
    ("lm_head 576->49152", 49152, 576, 1),
]


def _quant_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    from oficina.infer.int8 import quantize_weight

    return quantize_weight(w)


def _per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    s = x.abs().amax(-1, keepdim=True).clamp_min(1e-8) / 127
    return torch.round(x / s).to(torch.int8), s


def candidates() -> dict[str, Callable[[torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]]:
    """name -> prepare(w float32 [N, K]) -> call(x float32 [1, K]) -> y float32 [1, N]."""

    def f32_linear(w):
        return lambda x: F.linear(x, w)

    def f32_colmajor(w):
        wc = w.t().contiguous().t()  # same [N, K] values, column-major (oficina.infer.layout)
        return lambda x: F.linear(x, wc)

    def f32_mkl(w):
        packed = torch.ops.mkl._mkl_reorder_linear_weight(w, 1)
        return lambda x: torch.ops.mkl._mkl_linear(x, packed, w, None, 1)

    def f32_onednn(w):
        packed = torch.ops.mkldnn._reorder_linear_weight(w, 1)
        return lambda x: torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")

    def f32_row(w):  # oficina.infer.row_linear: what the engine's one-row calls run
        from oficina.infer.row_linear import kernel

        kernel()
        return lambda x: torch.ops.oficina.linear_row(x, w, None)

    def bf16_row(w):
        from oficina.infer.row_linear import kernel

        kernel()
        wb = w.bfloat16()
        return lambda x: torch.ops.oficina.linear_row(x.bfloat16(), wb, None).float()

    def bf16_linear(w):
        wb = w.bfloat16()
        return lambda x: F.linear(x.bfloat16(), wb).float()

    def bf16_onednn(w):
        packed = torch.ops.mkldnn._reorder_linear_weight(w.bfloat16(), 1)
        return lambda x: torch.ops.mkldnn._linear_pointwise(
            x.bfloat16(), packed, None, "none", [], ""
        ).float()

    def int8_woq(w):
        q, s = _quant_rows(w)
        sb = s.bfloat16()
        return lambda x: torch._weight_int8pack_mm(x.bfloat16(), q, sb).float()

    def int8_row(w):  # oficina.infer.row_linear's int8 op: Int8Linear's default one-row call
        from oficina.infer.row_linear import kernel

        kernel()
        q, s = _quant_rows(w)
        return lambda x: torch.ops.oficina.int8_linear_row(x, q, s, None)

    def int8_int_mm(w):
        q, s = _quant_rows(w)
        qt = q.t()  # [K, N], a view of the [N, K] buffer (oneDNN reads it as transposed B)

        def call(x):
            xq, xs = _per_token(x)
            return torch._int_mm(xq, qt).float() * (xs * s)

        return call

    def int8_int_mm_alone(w):
        # the kernel alone, on activations quantized beforehand: the floor of any _int_mm path,
        # a compiled one included (quantization fused into one kernel still costs more than 0)
        q, _ = _quant_rows(w)
        qt, cache = q.t(), {}

        def call(x):
            if cache.get("x") is not x:
                cache["x"], cache["xq"] = x, _per_token(x)[0]
            return torch._int_mm(cache["xq"], qt).float()

        return call

    def int8_onednn(w):
        q, s = _quant_rows(w)
        packed = torch.ops.onednn.qlinear_prepack(q, [1, w.shape[1]])
        zp = torch.zeros(w.shape[0], dtype=torch.long)

        def call(x):
            # uint8 activations, asymmetric per token (oneDNN's usual src type)
            lo, hi = x.amin(-1).clamp_max(0), x.amax(-1).clamp_min(0)
            xs = ((hi - lo) / 255).clamp_min(1e-8)
            xz = torch.round(-lo / xs).to(torch.long)
            xq = torch.clamp(torch.round(x / xs[:, None]) + xz[:, None], 0, 255).to(torch.uint8)
            return torch.ops.onednn.qlinear_pointwise.tensor(
                xq, xs, xz, packed, s, zp, None, 1.0, 0, torch.float32, "none", [], ""
            )

        return call

    def int8_fbgemm(w):
        torch.backends.quantized.engine = "fbgemm"
        q, s = _quant_rows(w)
        qw = torch._make_per_channel_quantized_tensor(q, s.double(), torch.zeros_like(s).long(), 0)
        packed = torch.ops.quantized.linear_prepack(qw, None)
        return lambda x: torch.ops.quantized.linear_dynamic(x, packed, False)

    return {
        "f32 linear": f32_linear,
        "f32 column-major": f32_colmajor,
        "f32 mkl packed": f32_mkl,
        "f32 onednn packed": f32_onednn,
        "f32 row kernel": f32_row,
        "bf16 linear": bf16_linear,
        "bf16 onednn packed": bf16_onednn,
        "bf16 row kernel": bf16_row,
        "int8 weight-only": int8_woq,
        "int8 row kernel": int8_row,
        "int8 x int8 _int_mm": int8_int_mm,
        "int8 _int_mm alone": int8_int_mm_alone,
        "int8 onednn qlinear": int8_onednn,
        "int8 fbgemm dynamic": int8_fbgemm,
    }


def _bytes(name: str, n: int, k: int) -> int:
    per = 4 if name.startswith("f32") else 2 if name.startswith("bf16") else 1
    return n * k * per


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3, help="decode steps' matmuls per measurement")
    ap.add_argument("--only", nargs="*", help="candidate names (default: all)")
    ap.add_argument(
        "--model",
        metavar="INT8_DIR",
        help="instead: the dynamic int8 kernel's effect on a model (perplexity, greedy tokens)",
    )
    ap.add_argument("--texts", type=int, default=40, help="--model: demo validation texts")
    ap.add_argument("--tokens", type=int, default=32, help="--model: greedy tokens per prompt")
    args = ap.parse_args()
    if args.model:
        return model_checks(args.model, args.texts, args.tokens)
    torch.manual_seed(0)
    print(f"machine: {machine()}; OpenMP wait: {OPENMP}")
    cands = candidates()
    names = [n for n in cands if not args.only or n in args.only]
    # calls[name][label]: one prepared kernel per layer (distinct weights, as in the model)
    calls: dict[str, dict[str, list[Callable[[torch.Tensor], torch.Tensor]]]] = {}
    xs, errors = {}, {}
    with torch.inference_mode():
        for label, n, k, count in SHAPES:
            # activations with a few large channels, as the residual stream has (they decide
            # how well per-token int8 does); weights of a trained model's scale
            x = torch.randn(1, k)
            x[0, torch.randperm(k)[:4]] *= 20
            xs[label] = x
            for i in range(count):
                w = torch.randn(n, k) * 0.05
                for name in list(names):
                    try:
                        call = cands[name](w)
                        y = call(x).double()
                    except (RuntimeError, AttributeError, NotImplementedError) as e:
                        print(f"{name}: unavailable here ({str(e).splitlines()[0][:100]})")
                        names.remove(name)
                        continue
                    if i == 0:  # the error, on the first weight of each shape
                        q, s = _quant_rows(w)
                        if name.startswith("int8"):
                            want = F.linear(x.double(), q.double() * s.double()[:, None])
                        else:
                            want = F.linear(x.double(), w.double())
                        err = float((y - want).norm() / want.norm())
                        errors[name] = max(errors.get(name, 0.0), err)
                    calls.setdefault(name, {}).setdefault(label, []).append(call)
        times: dict[tuple[str, str], list[float]] = {}
        for _ in range(args.rounds):
            for name in names:
                for label, *_ in SHAPES:
                    x, fns = xs[label], calls[name][label]
                    t0 = time.perf_counter()
                    for _ in range(args.steps):
                        for fn in fns:
                            fn(x)
                    dt = (time.perf_counter() - t0) / (args.steps * len(fns))
                    times.setdefault((name, label), []).append(dt)
    med = {key: statistics.median(v) for key, v in times.items()}
    print(f"load after: {' '.join(open('/proc/loadavg').read().split()[:3])}")
    print(
        f"M=1, {torch.get_num_threads()} threads, every layer its own weights (read from memory,"
        f" not cache), median of {args.rounds} rounds; microseconds per call"
    )
    head = f"{'candidate':<22}" + "".join(f"{lab.split()[0]:>14}" for lab, *_ in SHAPES)
    print(head + f"{'step ms':>10}{'GB/s':>7}{'vs f32':>8}{'rel err':>9}")
    step = {name: sum(med[name, lab] * c for lab, _, _, c in SHAPES) for name in names}
    for name in names:
        gb = sum(_bytes(name, n, k) * c for _, n, k, c in SHAPES) / 1e9
        row = f"{name:<22}" + "".join(f"{med[name, lab] * 1e6:>14.1f}" for lab, *_ in SHAPES)
        ratio = step[names[0]] / step[name]
        print(
            row + f"{step[name] * 1e3:>10.2f}{gb / step[name]:>7.1f}{ratio:>7.2f}x"
            f"{errors[name]:>9.1e}"
        )
    print("step ms: one decode step's matmuls (each shape x its count); vs f32: the first row's")
    print("step time over this row's; rel err: vs float64 (float rows) or the dequantized weights")


def model_checks(path: str, n_texts: int, n_tokens: int) -> None:
    """What quantizing activations (the one-row dynamic kernel) does to an int8 model.

    * perplexity of the demo validation texts (the engine's definition, as ``oficina quantize``
      reports it) with every int8 layer computing ``fake_quant_rows`` — the dynamic kernel's
      numbers, each row quantized alone — vs the int8 directory as it scores (float
      activations: prompts take the dequantize + GEMM path), and vs its float32 source;
    * greedy tokens of the chat prompts of ``benchmarks/generate.py`` decoded with the dynamic
      kernel vs the weight-only one, and each vs the float32 source: identical completions,
      and where the first difference is.
    """
    import json
    from pathlib import Path

    from generate import PROMPTS

    from oficina.infer import int8
    from oficina.infer.engine import Engine, SamplingParams

    texts_file = Path(__file__).resolve().parents[1] / "examples/demo/task/validation.jsonl"
    rows = [json.loads(x) for x in texts_file.read_text().splitlines() if x.strip()]
    texts = [r["text"] for r in rows if r.get("text")][:n_texts]
    eng = Engine.from_spec(path)
    eng.prefix_cache = None  # each variant computes its own prompts
    source = json.loads((Path(path) / int8.RECIPE).read_text()).get("source")
    ppl = {}
    f32 = Engine.from_spec(source) if source else None
    if f32 is not None:
        ppl["float32 source"] = f32.perplexity(texts, 1024)
    ppl["int8, float activations"] = eng.perplexity(texts, 1024)

    def per_row_quantized(self, x):
        w = self.weight.float() * self.weight_scale[:, None]
        y = F.linear(int8.fake_quant_rows(x.float()), w)
        return (y if self.bias is None else y + self.bias).to(x.dtype)

    plain = int8.Int8Linear.forward
    int8.Int8Linear.forward = per_row_quantized
    try:
        ppl["int8, activations int8 per row"] = eng.perplexity(texts, 1024)
    finally:
        int8.Int8Linear.forward = plain
    prompts = [eng.render_chat([{"role": "user", "content": p}]) for p in PROMPTS]
    p = SamplingParams(max_new_tokens=n_tokens, ignore_eos=True)
    got = {}
    before = int8.DECODE_KERNEL
    for kernel in ("dynamic", "weight-only"):
        int8.DECODE_KERNEL = kernel
        got[kernel] = [eng.generate([x], p)[0].token_ids for x in prompts]  # one row: M = 1
    int8.DECODE_KERNEL = before
    if f32 is not None:
        got["float32"] = [f32.generate([x], p)[0].token_ids for x in prompts]

    def agreement(a: str, b: str) -> str:
        pairs = list(zip(got[a], got[b], strict=True))
        same = sum(x == y for x, y in pairs)
        first = [
            next((i for i, (u, v) in enumerate(zip(x, y, strict=False)) if u != v), "-")
            for x, y in pairs
        ]
        return f"{same}/{len(pairs)} identical, first difference at token {first}"

    print(f"model: {path} (dynamic kernel available: {int8.dynamic_available()})")
    base = ppl.get("float32 source")
    print(f"perplexity, first {len(texts)} demo validation texts, 1024-token windows:")
    for name, v in ppl.items():
        print(f"  {name:<34}{v:9.3f}" + (f"  {v / base - 1:+.2%}" if base else ""))
    print(f"greedy, {len(prompts)} chat prompts x {n_tokens} tokens, batch 1:")
    print(f"  dynamic vs weight-only kernel: {agreement('dynamic', 'weight-only')}")
    if f32 is not None:
        for k in ("weight-only", "dynamic"):
            print(f"  {k} vs float32: {agreement(k, 'float32')}")


if __name__ == "__main__":
    main()
