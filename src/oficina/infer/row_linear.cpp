// The CPU kernel of the op oficina::linear_row (oficina/infer/row_linear.py defines the op and a
// Python twin, F.linear; oficina/infer/native.py builds this with -O3 -march=native).
//
// One activation row times a float32 or bfloat16 weight [N, K] stored row-major: the matrix-vector
// product of every batch-1 decode step, ~120 of them a token. It is bound by how fast the weights
// stream from memory, so each output is one dot product over a contiguous weight row, with the
// rows split across torch's threads in chunks of at least 64 KB. F.linear sends a one-row float32
// call to MKL's sgemv, which streamed SmolLM2's weights at 7-11 GB/s on 2 AMD Zen 4 cores where
// this loop streams ~26 (one step's matmuls 58 -> 21 ms float32, 32 -> 12 ms bfloat16; README,
// issue 16). Sums are float32 whatever the weight type, in a fixed order (two 16-lane accumulators,
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

// Widen 16 bfloat16 to float32: the top half of each float's bits.
#if defined(__AVX512F__)
inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
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
  const int64_t grain = std::max<int64_t>(1, (64 * 1024) / (k_len * int64_t(sizeof(W))));
  at::parallel_for(0, n_len, grain, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; n++) {
      float v = dot(w + n * k_len, x, k_len);
      if (bias) v += static_cast<float>(bias[n]);
      y[n] = static_cast<W>(v);
    }
  });
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

TORCH_LIBRARY_IMPL(oficina, CPU, m) { m.impl("linear_row", TORCH_FN(linear_row)); }
