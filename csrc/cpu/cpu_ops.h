// The C++ CPU implementations of the redone_fast_C operators (csrc/README.md states the contract).
// bindings.cpp checks the arguments (dtype, shape, device, stride along V) and then calls these,
// which assume valid input.
#pragma once

#include <optional>
#include <tuple>

#include <ATen/core/Tensor.h>

namespace redone_fast::cpu {

// logits [n, V] fp32/bf16/fp16 with stride(1) == 1; target [n] int64; per-row vectors [n] fp32.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> row_stats(
    const at::Tensor& logits, const at::Tensor& target, double inv_temperature, double softcap,
    bool need_sum, bool need_entropy);

void ce_grad_(const at::Tensor& logits, const at::Tensor& target, const at::Tensor& lse,
              const at::Tensor& row_scale, double label_smoothing, double z_loss, double softcap);

// row_stats (no entropy, no temperature) and then ce_grad_ with its lse, row by row -> (lse, target_logit,
// sum_logits or empty).
std::tuple<at::Tensor, at::Tensor, at::Tensor> ce_stats_grad_(const at::Tensor& logits, const at::Tensor& target,
                                                              const at::Tensor& row_scale, double label_smoothing,
                                                              double z_loss, double softcap, bool need_sum);

void logprob_grad_(const at::Tensor& logits, const at::Tensor& target, const at::Tensor& lse,
                   const std::optional<at::Tensor>& entropy, const std::optional<at::Tensor>& grad_logp,
                   const std::optional<at::Tensor>& grad_entropy, double inv_temperature);

// Which compiled variant of the row kernels runs here: "default", "avx2" or "avx512".
const char* row_kernels_isa();

// rewards [N] fp32, group_ids [N] int64, token_ranges [N, 2] int64 or none.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> group_advantages(
    const at::Tensor& rewards, const at::Tensor& group_ids, int64_t num_groups, bool scale_by_std,
    double eps, const std::optional<at::Tensor>& token_ranges, int64_t num_tokens);

}  // namespace redone_fast::cpu
