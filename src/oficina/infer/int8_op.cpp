// The CPU kernel of the op oficina::int8_linear_dynamic in C++ (oficina/infer/int8.py defines the
// op, and has the same kernel in Python for machines without a compiler; oficina/infer/native.py builds this).
//
// fbgemm's packed weight (a TorchScript object) is kept here, by the int8 weight tensor, and
// passed to quantized::linear_dynamic without going through Python: in a compiled SmolLM2 decode
// step the Python kernel cost ~36 us of each of its 121 calls, most of it converting the packed
// object between Python and C++ at each call (README, issue 16). Packing itself stays in Python:
// a miss calls the op oficina::int8_pack (int8.py's _pack_dynamic) through the dispatcher.
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>
#include <torch/library.h>

#include <mutex>
#include <optional>
#include <unordered_map>

namespace {

using Weak = c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>;

// One tensor as it was when packed: the very same tensor (not a new one at a reused address),
// the same memory, the same version (no in-place write since).
struct Seen {
  Weak impl;
  const void* data = nullptr;
  uint32_t version = 0;

  Seen() : impl(c10::intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>()) {}
  explicit Seen(const at::Tensor& t)
      : impl(t.getIntrusivePtr()), data(t.data_ptr()), version(t._version()) {}
  bool same(const at::Tensor& t) const {
    return !impl.expired() && impl._unsafe_get_target() == t.unsafeGetTensorImpl() &&
        data == t.data_ptr() && version == t._version();
  }
};

struct Entry {
  Seen weight, scale, bias;  // bias: an undefined tensor when there is none
  c10::IValue packed;
};

std::mutex mutex;
std::unordered_map<const c10::TensorImpl*, Entry> packed_by_weight;

c10::IValue packed_for(const at::Tensor& weight, const at::Tensor& scale,
                       const std::optional<at::Tensor>& bias) {
  const at::Tensor b = bias.value_or(at::Tensor());
  {
    std::lock_guard<std::mutex> lock(mutex);
    auto hit = packed_by_weight.find(weight.unsafeGetTensorImpl());
    if (hit != packed_by_weight.end()) {
      const Entry& e = hit->second;
      bool bias_same = b.defined() ? e.bias.same(b) : e.bias.impl.expired();
      if (e.weight.same(weight) && e.scale.same(scale) && bias_same) return e.packed;
    }
  }
  // Packed outside the lock: the packing runs Python (it takes the GIL).
  static auto pack = c10::Dispatcher::singleton().findSchemaOrThrow("oficina::int8_pack", "");
  torch::jit::Stack stack{weight, scale, bias.has_value() ? c10::IValue(*bias) : c10::IValue()};
  pack.callBoxed(&stack);
  Entry entry{Seen(weight), Seen(scale), b.defined() ? Seen(b) : Seen(), stack.at(0)};
  std::lock_guard<std::mutex> lock(mutex);
  // Entries of freed weights leave here (a packed copy is as large as its int8 weight).
  for (auto it = packed_by_weight.begin(); it != packed_by_weight.end();) {
    it = it->second.weight.impl.expired() ? packed_by_weight.erase(it) : std::next(it);
  }
  packed_by_weight[weight.unsafeGetTensorImpl()] = entry;
  return entry.packed;
}

at::Tensor int8_linear_dynamic(const at::Tensor& x, const at::Tensor& weight,
                               const at::Tensor& scale, const std::optional<at::Tensor>& bias,
                               bool reduce_range) {
  static auto linear =
      c10::Dispatcher::singleton().findSchemaOrThrow("quantized::linear_dynamic", "");
  torch::jit::Stack stack{x, packed_for(weight, scale, bias), reduce_range};
  linear.callBoxed(&stack);
  return stack.at(0).toTensor();
}

}  // namespace

TORCH_LIBRARY_IMPL(oficina, CPU, m) {
  m.impl("int8_linear_dynamic", TORCH_FN(int8_linear_dynamic));
}
