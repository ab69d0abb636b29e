// C++ CPU row kernels of the fused LM-head ops: row_stats, ce_grad_, ce_stats_grad_, logprob_grad_
// (csrc/README.md).
// Same math as kernels/lm_head_rows.py (Triton) and redone_fast/ops/_torch_rows.py (torch): logits
// chunk [n, V] in fp32/bf16/fp16, every computation in fp32, rows in parallel (at::parallel_for).
//
// The kernels themselves are in lm_head_rows_body.h, compiled here once per instruction set (see the
// top of that file); the widest one the CPU supports runs, unless REDONE_FAST_CPU_ISA names another
// (default | avx2 | avx512; tests use it to check every variant on one machine).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include "cpu_ops.h"

namespace redone_fast::cpu {
namespace {

enum class LogitsDtype { kFloat, kBFloat16, kHalf };

LogitsDtype logits_dtype(const at::Tensor& logits) {
  switch (logits.scalar_type()) {
    case at::kFloat: return LogitsDtype::kFloat;
    case at::kBFloat16: return LogitsDtype::kBFloat16;
    case at::kHalf: return LogitsDtype::kHalf;
    default: TORCH_CHECK(false, "redone_fast_C: logits dtype must be float32, bfloat16 or float16, got ", logits.scalar_type());
  }
}

struct StatsArgs {
  const void* logits;
  int64_t row_stride, vocab;
  LogitsDtype dtype;
  const int64_t* target;
  float inv_temperature, softcap;
  bool need_sum, need_entropy;
  float *lse, *target_logit, *sum_logits, *entropy;
};

struct CeGradArgs {
  void* logits;
  int64_t row_stride, vocab;
  LogitsDtype dtype;
  const int64_t* target;
  const float *lse, *row_scale;
  float label_smoothing, z_loss, softcap;
};

struct CeStatsGradArgs {
  void* logits;
  int64_t row_stride, vocab;
  LogitsDtype dtype;
  const int64_t* target;
  const float* row_scale;
  float label_smoothing, z_loss, softcap;
  bool need_sum;
  float *lse, *target_logit, *sum_logits;
};

struct LogprobGradArgs {
  void* logits;
  int64_t row_stride, vocab;
  LogitsDtype dtype;
  const int64_t* target;
  const float *lse, *entropy, *grad_logp, *grad_entropy;  // the last three may be null
  float inv_temperature;
};

struct RowKernels {
  const char* isa;
  void (*row_stats)(const StatsArgs&, int64_t, int64_t);
  void (*ce_grad)(const CeGradArgs&, int64_t, int64_t);
  void (*logprob_grad)(const LogprobGradArgs&, int64_t, int64_t);
  void (*ce_stats_grad)(const CeStatsGradArgs&, int64_t, int64_t);
};

}  // namespace

// ---- one copy of the kernels per instruction set ----
#if defined(__GNUC__) && !defined(__clang__)
// The 64-byte vector helpers are always inlined: no vector ever crosses a call, so the ABI note that
// GCC prints for them (vector arguments without AVX-512 enabled) does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"
#endif
namespace isa_default {
#define RF_VECTOR_BYTES 16  // SSE2, the x86-64 baseline (and NEON-sized elsewhere)
#include "lm_head_rows_body.h"
#undef RF_VECTOR_BYTES
}  // namespace isa_default

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define REDONE_FAST_X86_VARIANTS 1
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace isa_avx2 {
#define RF_VECTOR_BYTES 32
#include "lm_head_rows_body.h"
#undef RF_VECTOR_BYTES
}  // namespace isa_avx2
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")
namespace isa_avx512 {
#define RF_VECTOR_BYTES 64
#include "lm_head_rows_body.h"
#undef RF_VECTOR_BYTES
}  // namespace isa_avx512
#pragma GCC pop_options
#endif

namespace {

RowKernels pick_kernels() {
  const RowKernels fallback{"default", isa_default::row_stats_range, isa_default::ce_grad_range,
                            isa_default::logprob_grad_range, isa_default::ce_stats_grad_range};
#ifdef REDONE_FAST_X86_VARIANTS
  const RowKernels avx2{"avx2", isa_avx2::row_stats_range, isa_avx2::ce_grad_range, isa_avx2::logprob_grad_range,
                        isa_avx2::ce_stats_grad_range};
  const RowKernels avx512{"avx512", isa_avx512::row_stats_range, isa_avx512::ce_grad_range,
                          isa_avx512::logprob_grad_range, isa_avx512::ce_stats_grad_range};
  __builtin_cpu_init();
  const bool has_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  const bool has_avx512 = has_avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  const char* env = std::getenv("REDONE_FAST_CPU_ISA");
  const std::string requested = env != nullptr ? env : "";
  if (requested == "default") return fallback;
  if (requested == "avx2" && has_avx2) return avx2;
  if (requested == "avx512" && has_avx512) return avx512;
  // Anything else (unset, or a set this CPU lacks): the widest available.
  if (has_avx512) return avx512;
  if (has_avx2) return avx2;
#endif
  return fallback;
}

const RowKernels& kernels() {
  static const RowKernels chosen = pick_kernels();
  return chosen;
}

// Rows per parallel task: at least ~64K logits of work each, so small chunks run on one thread.
int64_t grain_rows(int64_t vocab) { return std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(vocab, 1)); }

const float* optional_data(const std::optional<at::Tensor>& t) {
  return t.has_value() ? t->const_data_ptr<float>() : nullptr;
}

}  // namespace

const char* row_kernels_isa() { return kernels().isa; }

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> row_stats(
    const at::Tensor& logits, const at::Tensor& target, double inv_temperature, double softcap,
    bool need_sum, bool need_entropy) {
  const int64_t rows = logits.size(0), vocab = logits.size(1);
  const auto options = logits.options().dtype(at::kFloat);
  at::Tensor lse = at::empty({rows}, options);
  at::Tensor target_logit = at::empty({rows}, options);
  at::Tensor sum_logits = at::empty({need_sum ? rows : 0}, options);
  at::Tensor entropy = at::empty({need_entropy ? rows : 0}, options);
  const at::Tensor target_c = target.contiguous();
  const StatsArgs args{logits.const_data_ptr(), logits.stride(0), vocab, logits_dtype(logits),
                       target_c.const_data_ptr<int64_t>(), static_cast<float>(inv_temperature),
                       static_cast<float>(softcap), need_sum, need_entropy, lse.mutable_data_ptr<float>(),
                       target_logit.mutable_data_ptr<float>(),
                       need_sum ? sum_logits.mutable_data_ptr<float>() : nullptr,
                       need_entropy ? entropy.mutable_data_ptr<float>() : nullptr};
  const auto kernel = kernels().row_stats;
  at::parallel_for(0, rows, grain_rows(vocab), [&](int64_t begin, int64_t end) { kernel(args, begin, end); });
  return {lse, target_logit, sum_logits, entropy};
}

void ce_grad_(const at::Tensor& logits, const at::Tensor& target, const at::Tensor& lse,
              const at::Tensor& row_scale, double label_smoothing, double z_loss, double softcap) {
  const int64_t rows = logits.size(0), vocab = logits.size(1);
  const at::Tensor target_c = target.contiguous(), lse_c = lse.contiguous(), scale_c = row_scale.contiguous();
  const CeGradArgs args{logits.mutable_data_ptr(), logits.stride(0), vocab, logits_dtype(logits),
                        target_c.const_data_ptr<int64_t>(), lse_c.const_data_ptr<float>(),
                        scale_c.const_data_ptr<float>(), static_cast<float>(label_smoothing),
                        static_cast<float>(z_loss), static_cast<float>(softcap)};
  const auto kernel = kernels().ce_grad;
  at::parallel_for(0, rows, grain_rows(vocab), [&](int64_t begin, int64_t end) { kernel(args, begin, end); });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ce_stats_grad_(const at::Tensor& logits, const at::Tensor& target,
                                                              const at::Tensor& row_scale, double label_smoothing,
                                                              double z_loss, double softcap, bool need_sum) {
  const int64_t rows = logits.size(0), vocab = logits.size(1);
  const auto options = logits.options().dtype(at::kFloat);
  at::Tensor lse = at::empty({rows}, options);
  at::Tensor target_logit = at::empty({rows}, options);
  at::Tensor sum_logits = at::empty({need_sum ? rows : 0}, options);
  const at::Tensor target_c = target.contiguous(), scale_c = row_scale.contiguous();
  const CeStatsGradArgs args{logits.mutable_data_ptr(), logits.stride(0), vocab, logits_dtype(logits),
                             target_c.const_data_ptr<int64_t>(), scale_c.const_data_ptr<float>(),
                             static_cast<float>(label_smoothing), static_cast<float>(z_loss),
                             static_cast<float>(softcap), need_sum, lse.mutable_data_ptr<float>(),
                             target_logit.mutable_data_ptr<float>(),
                             need_sum ? sum_logits.mutable_data_ptr<float>() : nullptr};
  const auto kernel = kernels().ce_stats_grad;
  at::parallel_for(0, rows, grain_rows(vocab), [&](int64_t begin, int64_t end) { kernel(args, begin, end); });
  return {lse, target_logit, sum_logits};
}

void logprob_grad_(const at::Tensor& logits, const at::Tensor& target, const at::Tensor& lse,
                   const std::optional<at::Tensor>& entropy, const std::optional<at::Tensor>& grad_logp,
                   const std::optional<at::Tensor>& grad_entropy, double inv_temperature) {
  const int64_t rows = logits.size(0), vocab = logits.size(1);
  const auto contiguous = [](const std::optional<at::Tensor>& t) {
    return t.has_value() ? std::optional<at::Tensor>(t->contiguous()) : std::nullopt;
  };
  const at::Tensor target_c = target.contiguous(), lse_c = lse.contiguous();
  const std::optional<at::Tensor> entropy_c = contiguous(entropy), grad_logp_c = contiguous(grad_logp),
                                  grad_entropy_c = contiguous(grad_entropy);
  const LogprobGradArgs args{logits.mutable_data_ptr(), logits.stride(0), vocab, logits_dtype(logits),
                             target_c.const_data_ptr<int64_t>(), lse_c.const_data_ptr<float>(),
                             optional_data(entropy_c), optional_data(grad_logp_c), optional_data(grad_entropy_c),
                             static_cast<float>(inv_temperature)};
  const auto kernel = kernels().logprob_grad;
  at::parallel_for(0, rows, grain_rows(vocab), [&](int64_t begin, int64_t end) { kernel(args, begin, end); });
}

}  // namespace redone_fast::cpu
