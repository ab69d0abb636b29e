// The extension redone_fast._C: TORCH_LIBRARY(redone_fast_C) with the operator schemas, their CPU
// implementations (argument checks here, kernels in cpu/) and shape-only Meta implementations, so that
// fake tensors and torch.compile can trace them. csrc/README.md states the contract; the CUDA
// implementations are registered by cuda/bindings_cuda.cpp when the extension is built with CUDA.
#include <Python.h>  // first, as Python asks

#include <optional>
#include <tuple>

#include <ATen/MemoryOverlap.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/core/SymInt.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include "cpu/cpu_ops.h"

namespace redone_fast {
namespace {

// ---------------------------------------------------------------------------------------------
// Argument checks, shared by the CPU and Meta implementations (sizes as SymInts: valid under
// torch.compile with dynamic shapes). Inputs that only the Python layer can validate cheaply
// (target values, group ids) are documented in csrc/README.md.
// ---------------------------------------------------------------------------------------------
void check_device(const at::Tensor& t, const char* op, const char* name, c10::DeviceType device) {
  TORCH_CHECK(t.device().type() == device, op, ": ", name, " must be on ", c10::DeviceTypeName(device, true),
              ", got a tensor on ", t.device());
}

void check_logits(const at::Tensor& logits, const char* op, c10::DeviceType device) {
  check_device(logits, op, "logits", device);
  TORCH_CHECK(logits.dim() == 2, op, ": logits must be a 2-D chunk [n, V], got ", logits.dim(), "-D");
  const auto dtype = logits.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf, op,
              ": logits must be float32, bfloat16 or float16, got ", dtype);
  TORCH_CHECK(logits.sym_size(1) <= 1 || logits.sym_stride(1) == 1, op,
              ": logits rows must be contiguous along V (stride(1) == 1), got strides ", logits.sym_strides());
}

// A per-row vector: 1-D, n elements, the given dtype (any stride: the kernels make it contiguous).
void check_rows(const at::Tensor& t, const char* op, const char* name, at::ScalarType dtype,
                const c10::SymInt& rows, c10::DeviceType device) {
  check_device(t, op, name, device);
  TORCH_CHECK(t.dim() == 1 && t.sym_size(0) == rows, op, ": ", name, " must have shape [", rows,
              "] (one value per logits row), got ", t.sym_sizes());
  TORCH_CHECK(t.scalar_type() == dtype, op, ": ", name, " must be ", dtype, ", got ", t.scalar_type());
}

void check_row_stats(const at::Tensor& logits, const at::Tensor& target, c10::DeviceType device) {
  check_logits(logits, "row_stats", device);
  check_rows(target, "row_stats", "target", at::kLong, logits.sym_size(0), device);
}

void check_ce_grad(const at::Tensor& logits, const at::Tensor& target, const at::Tensor& lse,
                   const at::Tensor& row_scale, c10::DeviceType device) {
  check_logits(logits, "ce_grad_", device);
  const c10::SymInt rows = logits.sym_size(0);
  check_rows(target, "ce_grad_", "target", at::kLong, rows, device);
  check_rows(lse, "ce_grad_", "lse", at::kFloat, rows, device);
  check_rows(row_scale, "ce_grad_", "row_scale", at::kFloat, rows, device);
}

void check_ce_stats_grad(const at::Tensor& logits, const at::Tensor& target, const at::Tensor& row_scale,
                         c10::DeviceType device) {
  check_logits(logits, "ce_stats_grad_", device);
  const c10::SymInt rows = logits.sym_size(0);
  check_rows(target, "ce_stats_grad_", "target", at::kLong, rows, device);
  check_rows(row_scale, "ce_stats_grad_", "row_scale", at::kFloat, rows, device);
}

void check_logprob_grad(const at::Tensor& logits, const at::Tensor& target, const at::Tensor& lse,
                        const std::optional<at::Tensor>& entropy, const std::optional<at::Tensor>& grad_logp,
                        const std::optional<at::Tensor>& grad_entropy, c10::DeviceType device) {
  const char* op = "logprob_grad_";
  check_logits(logits, op, device);
  const c10::SymInt rows = logits.sym_size(0);
  check_rows(target, op, "target", at::kLong, rows, device);
  check_rows(lse, op, "lse", at::kFloat, rows, device);
  if (entropy.has_value()) check_rows(*entropy, op, "entropy", at::kFloat, rows, device);
  if (grad_logp.has_value()) check_rows(*grad_logp, op, "grad_logp", at::kFloat, rows, device);
  if (grad_entropy.has_value()) {
    check_rows(*grad_entropy, op, "grad_entropy", at::kFloat, rows, device);
    TORCH_CHECK(entropy.has_value(), op, ": grad_entropy needs the entropy (E_p[s] = lse - entropy)");
  }
}

void check_group_advantages(const at::Tensor& rewards, const at::Tensor& group_ids, int64_t num_groups,
                            double eps, const std::optional<at::Tensor>& token_ranges, int64_t num_tokens,
                            c10::DeviceType device) {
  const char* op = "group_advantages";
  check_device(rewards, op, "rewards", device);
  TORCH_CHECK(rewards.dim() == 1, op, ": rewards must be 1-D [N], got shape ", rewards.sym_sizes());
  TORCH_CHECK(rewards.scalar_type() == at::kFloat, op, ": rewards must be float32, got ", rewards.scalar_type());
  check_rows(group_ids, op, "group_ids", at::kLong, rewards.sym_size(0), device);
  TORCH_CHECK(num_groups >= 0, op, ": num_groups must be >= 0, got ", num_groups);
  TORCH_CHECK(eps >= 0.0, op, ": eps must be >= 0, got ", eps);
  if (token_ranges.has_value()) {
    const at::Tensor& ranges = *token_ranges;
    check_device(ranges, op, "token_ranges", device);
    TORCH_CHECK(ranges.dim() == 2 && ranges.sym_size(0) == rewards.sym_size(0) && ranges.sym_size(1) == 2, op,
                ": token_ranges must have shape [N, 2] = [", rewards.sym_size(0), ", 2], got ", ranges.sym_sizes());
    TORCH_CHECK(ranges.scalar_type() == at::kLong, op, ": token_ranges must be int64, got ", ranges.scalar_type());
    TORCH_CHECK(num_tokens >= 0, op, ": num_tokens must be >= 0, got ", num_tokens);
  }
}

// ---------------------------------------------------------------------------------------------
// CPU
// ---------------------------------------------------------------------------------------------
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> row_stats_cpu(
    const at::Tensor& logits, const at::Tensor& target, double inv_temperature, double softcap, bool need_sum,
    bool need_entropy) {
  check_row_stats(logits, target, c10::DeviceType::CPU);
  return cpu::row_stats(logits, target, inv_temperature, softcap, need_sum, need_entropy);
}

void ce_grad_cpu(const at::Tensor& logits, const at::Tensor& target, const at::Tensor& lse,
                 const at::Tensor& row_scale, double label_smoothing, double z_loss, double softcap) {
  check_ce_grad(logits, target, lse, row_scale, c10::DeviceType::CPU);
  at::assert_no_internal_overlap(logits);  // rows written in parallel must not share memory (expand()ed)
  cpu::ce_grad_(logits, target, lse, row_scale, label_smoothing, z_loss, softcap);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ce_stats_grad_cpu(const at::Tensor& logits, const at::Tensor& target,
                                                                 const at::Tensor& row_scale, double label_smoothing,
                                                                 double z_loss, double softcap, bool need_sum) {
  check_ce_stats_grad(logits, target, row_scale, c10::DeviceType::CPU);
  at::assert_no_internal_overlap(logits);
  return cpu::ce_stats_grad_(logits, target, row_scale, label_smoothing, z_loss, softcap, need_sum);
}

void logprob_grad_cpu(const at::Tensor& logits, const at::Tensor& target, const at::Tensor& lse,
                      const std::optional<at::Tensor>& entropy, const std::optional<at::Tensor>& grad_logp,
                      const std::optional<at::Tensor>& grad_entropy, double inv_temperature) {
  check_logprob_grad(logits, target, lse, entropy, grad_logp, grad_entropy, c10::DeviceType::CPU);
  at::assert_no_internal_overlap(logits);
  cpu::logprob_grad_(logits, target, lse, entropy, grad_logp, grad_entropy, inv_temperature);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> group_advantages_cpu(
    const at::Tensor& rewards, const at::Tensor& group_ids, int64_t num_groups, bool scale_by_std, double eps,
    const std::optional<at::Tensor>& token_ranges, int64_t num_tokens) {
  check_group_advantages(rewards, group_ids, num_groups, eps, token_ranges, num_tokens, c10::DeviceType::CPU);
  return cpu::group_advantages(rewards, group_ids, num_groups, scale_by_std, eps, token_ranges, num_tokens);
}

// ---------------------------------------------------------------------------------------------
// Meta: the same checks, outputs of the right shapes and dtypes, no data
// ---------------------------------------------------------------------------------------------
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> row_stats_meta(
    const at::Tensor& logits, const at::Tensor& target, double /*inv_temperature*/, double /*softcap*/,
    bool need_sum, bool need_entropy) {
  check_row_stats(logits, target, c10::DeviceType::Meta);
  const auto options = logits.options().dtype(at::kFloat);
  const c10::SymInt rows = logits.sym_size(0);
  const c10::SymInt none = 0;
  return {at::empty_symint({rows}, options), at::empty_symint({rows}, options),
          at::empty_symint({need_sum ? rows : none}, options), at::empty_symint({need_entropy ? rows : none}, options)};
}

void ce_grad_meta(const at::Tensor& logits, const at::Tensor& target, const at::Tensor& lse,
                  const at::Tensor& row_scale, double /*label_smoothing*/, double /*z_loss*/, double /*softcap*/) {
  check_ce_grad(logits, target, lse, row_scale, c10::DeviceType::Meta);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ce_stats_grad_meta(
    const at::Tensor& logits, const at::Tensor& target, const at::Tensor& row_scale, double /*label_smoothing*/,
    double /*z_loss*/, double /*softcap*/, bool need_sum) {
  check_ce_stats_grad(logits, target, row_scale, c10::DeviceType::Meta);
  const auto options = logits.options().dtype(at::kFloat);
  const c10::SymInt rows = logits.sym_size(0);
  const c10::SymInt none = 0;
  return {at::empty_symint({rows}, options), at::empty_symint({rows}, options),
          at::empty_symint({need_sum ? rows : none}, options)};
}

void logprob_grad_meta(const at::Tensor& logits, const at::Tensor& target, const at::Tensor& lse,
                       const std::optional<at::Tensor>& entropy, const std::optional<at::Tensor>& grad_logp,
                       const std::optional<at::Tensor>& grad_entropy, double /*inv_temperature*/) {
  check_logprob_grad(logits, target, lse, entropy, grad_logp, grad_entropy, c10::DeviceType::Meta);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> group_advantages_meta(
    const at::Tensor& rewards, const at::Tensor& group_ids, int64_t num_groups, bool /*scale_by_std*/, double eps,
    const std::optional<at::Tensor>& token_ranges, int64_t num_tokens) {
  check_group_advantages(rewards, group_ids, num_groups, eps, token_ranges, num_tokens, c10::DeviceType::Meta);
  const auto f32 = rewards.options().dtype(at::kFloat);
  const c10::SymInt samples = rewards.sym_size(0);
  return {at::empty_symint({samples}, f32), at::empty({token_ranges.has_value() ? num_tokens : 0}, f32),
          at::empty({num_groups}, f32), at::empty({num_groups}, f32),
          at::empty_symint({samples}, rewards.options().dtype(at::kBool))};
}

}  // namespace
}  // namespace redone_fast

TORCH_LIBRARY(redone_fast_C, m) {
  m.def(
      "row_stats(Tensor logits, Tensor target, float inv_temperature, float softcap, bool need_sum, "
      "bool need_entropy) -> (Tensor lse, Tensor target_logit, Tensor sum_logits, Tensor entropy)");
  m.def(
      "ce_grad_(Tensor(a!) logits, Tensor target, Tensor lse, Tensor row_scale, float label_smoothing, "
      "float z_loss, float softcap) -> ()");
  m.def(
      "ce_stats_grad_(Tensor(a!) logits, Tensor target, Tensor row_scale, float label_smoothing, float z_loss, "
      "float softcap, bool need_sum) -> (Tensor lse, Tensor target_logit, Tensor sum_logits)");
  m.def(
      "logprob_grad_(Tensor(a!) logits, Tensor target, Tensor lse, Tensor? entropy, Tensor? grad_logp, "
      "Tensor? grad_entropy, float inv_temperature) -> ()");
  m.def(
      "group_advantages(Tensor rewards, Tensor group_ids, int num_groups, bool scale_by_std, float eps, "
      "Tensor? token_ranges, int num_tokens) -> (Tensor seq, Tensor tok, Tensor mean, Tensor std, Tensor keep)");
}

TORCH_LIBRARY_IMPL(redone_fast_C, CPU, m) {
  m.impl("row_stats", &redone_fast::row_stats_cpu);
  m.impl("ce_grad_", &redone_fast::ce_grad_cpu);
  m.impl("ce_stats_grad_", &redone_fast::ce_stats_grad_cpu);
  m.impl("logprob_grad_", &redone_fast::logprob_grad_cpu);
  m.impl("group_advantages", &redone_fast::group_advantages_cpu);
}

TORCH_LIBRARY_IMPL(redone_fast_C, Meta, m) {
  m.impl("row_stats", &redone_fast::row_stats_meta);
  m.impl("ce_grad_", &redone_fast::ce_grad_meta);
  m.impl("ce_stats_grad_", &redone_fast::ce_stats_grad_meta);
  m.impl("logprob_grad_", &redone_fast::logprob_grad_meta);
  m.impl("group_advantages", &redone_fast::group_advantages_meta);
}

// ---------------------------------------------------------------------------------------------
// The Python module: importing redone_fast._C runs the registrations above. One helper function.
// ---------------------------------------------------------------------------------------------
namespace {

PyObject* cpu_isa(PyObject* /*self*/, PyObject* /*args*/) {
  return PyUnicode_FromString(redone_fast::cpu::row_kernels_isa());
}

PyMethodDef module_methods[] = {
    {"cpu_isa", cpu_isa, METH_NOARGS,
     "cpu_isa() -> str: the compiled variant of the C++ row kernels that runs on this CPU "
     "(\"default\", \"avx2\" or \"avx512\"; REDONE_FAST_CPU_ISA picks a narrower one)."},
    {nullptr, nullptr, 0, nullptr},
};

PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    "_C",
    "redone_fast's C++/CUDA operators, registered with torch as torch.ops.redone_fast_C.* on import.",
    -1,
    module_methods,
};

}  // namespace

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&module_def); }
