// The CPU kernel of the op oficina::linear_row (oficina/infer/row_linear.py defines the op and a
// Python twin, F.linear; oficina/infer/native.py builds this with -O3 -march=native).
//
// One activation row times a float32, bfloat16 or int8 (scaled per row) weight [N, K] stored row-major: the matrix-vector
// product of every batch-1 decode step, ~120 of them a token. It is bound by how fast the weights
// stream from memory, so each output is one dot product over a contiguous weight row, with the
// rows split across torch's threads in chunks of at least 16 KB. F.linear sends a one-row float32
// call to MKL's sgemv, which streamed SmolLM2's weights at 7-11 GB/s on 2 AMD Zen 4 cores where
// this loop streams ~20 (one step's matmuls 67 -> 25 ms float32, 36 -> 14 ms bfloat16, int8
// 7.3 ms; benchmarks/decode_kernels.py, README, issue 16). Sums are float32 whatever the weight type, in a fixed order (two 16-lane accumulators,
// then the lanes): a row's numbers do not depend on the thread count.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <torch/library.h>

#include <cstring>
#include <optional>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

// Widen 16 weights to float32 (bfloat16: the top half of each float's bits; int8: exact).
#if defined(__AVX512F__)
inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load16(const int8_t* p) {
  __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b));
}
inline __m512 load16(const c10::BFloat16* p) {
  __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
#endif

template <typename W>
float dot(const W* w, const float* x, int64_t k_len) {
  int64_t k = 0;
  float s = 0.f;
#if defined(__AVX512F__)
  __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
  for (; k + 32 <= k_len; k += 32) {
    a0 = _mm512_fmadd_ps(load16(w + k), _mm512_loadu_ps(x + k), a0);
    a1 = _mm512_fmadd_ps(load16(w + k + 16), _mm512_loadu_ps(x + k + 16), a1);
  }
  s = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
#else
  // Eight independent sums: the compiler vectorizes these lanes (AVX2) without reassociating.
  float a[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (; k + 8 <= k_len; k += 8)
    for (int j = 0; j < 8; j++) a[j] += static_cast<float>(w[k + j]) * x[k + j];
  for (int j = 0; j < 8; j++) s += a[j];
#endif
  for (; k < k_len; k++) s += static_cast<float>(w[k]) * x[k];
  return s;
}

template <typename W>
void rows(const W* w, const float* x, const W* bias, W* y, int64_t n_len, int64_t k_len) {
  const int64_t grain = std::max<int64_t>(1, (16 * 1024) / (k_len * int64_t(sizeof(W))));
  at::parallel_for(0, n_len, grain, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; n++) {
      float v = dot(w + n * k_len, x, k_len);
      if (bias) v += static_cast<float>(bias[n]);
      y[n] = static_cast<W>(v);
    }
  });
}

// int8 weights [N, K] with a float32 scale per row: y[n] = scale[n] * (W[n] . x) + bias[n], the
// products exact in float32 (weight-only int8: the activations are not quantized).
void int8_rows(const int8_t* w, const float* scale, const float* x, const float* bias, float* y,
               int64_t n_len, int64_t k_len) {
  const int64_t grain = std::max<int64_t>(1, (16 * 1024) / k_len);
  at::parallel_for(0, n_len, grain, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; n++) {
      float v = dot(w + n * k_len, x, k_len) * scale[n];
      y[n] = bias ? v + bias[n] : v;
    }
  });
}

at::Tensor int8_linear_row(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scale,
                           const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(weight.dim() == 2 && weight.is_contiguous() && weight.scalar_type() == at::kChar,
              "int8_linear_row: weight int8 [N, K] row-major");
  const int64_t n_len = weight.size(0), k_len = weight.size(1);
  TORCH_CHECK(x.numel() == k_len, "int8_linear_row: x must be one row of ", k_len);
  TORCH_CHECK(scale.numel() == n_len && scale.scalar_type() == at::kFloat,
              "int8_linear_row: scale float32 [N]");
  const bool has_bias = bias.has_value() && bias->defined();
  at::Tensor bf;
  if (has_bias) {
    TORCH_CHECK(bias->numel() == n_len, "int8_linear_row: bias [N]");
    bf = bias->to(at::kFloat).contiguous();
  }
  at::Tensor xf = x.reshape({k_len}).to(at::kFloat).contiguous();
  at::Tensor sf = scale.contiguous();
  at::Tensor y = at::empty({1, n_len}, x.options().dtype(at::kFloat));
  int8_rows(weight.data_ptr<int8_t>(), sf.data_ptr<float>(), xf.data_ptr<float>(),
            has_bias ? bf.data_ptr<float>() : nullptr, y.data_ptr<float>(), n_len, k_len);
  return x.scalar_type() == at::kFloat ? y : y.to(x.scalar_type());
}

at::Tensor linear_row(const at::Tensor& x, const at::Tensor& weight,
                      const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(weight.dim() == 2 && weight.is_contiguous(), "linear_row: weight [N, K] row-major");
  const int64_t n_len = weight.size(0), k_len = weight.size(1);
  TORCH_CHECK(x.numel() == k_len, "linear_row: x must be one row of ", k_len);
  TORCH_CHECK(x.scalar_type() == weight.scalar_type(), "linear_row: x and weight types differ");
  const bool has_bias = bias.has_value() && bias->defined();
  if (has_bias)
    TORCH_CHECK(bias->is_contiguous() && bias->numel() == n_len &&
                    bias->scalar_type() == weight.scalar_type(),
                "linear_row: bias [N] of the weight's type");
  at::Tensor xf = x.reshape({k_len}).to(at::kFloat).contiguous();
  at::Tensor y = at::empty({1, n_len}, weight.options());
  if (weight.scalar_type() == at::kFloat) {
    rows(weight.data_ptr<float>(), xf.data_ptr<float>(),
         has_bias ? bias->data_ptr<float>() : nullptr, y.data_ptr<float>(), n_len, k_len);
  } else {
    TORCH_CHECK(weight.scalar_type() == at::kBFloat16, "linear_row: float32 or bfloat16 only");
    using B = c10::BFloat16;
    rows(weight.data_ptr<B>(), xf.data_ptr<float>(), has_bias ? bias->data_ptr<B>() : nullptr,
         y.data_ptr<B>(), n_len, k_len);
  }
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(oficina, CPU, m) {
  m.impl("linear_row", TORCH_FN(linear_row));
  m.impl("int8_linear_row", TORCH_FN(int8_linear_row));
}
