// The row kernels' bodies, compiled once per instruction set: lm_head_rows.cpp includes this file
// several times, each time inside its own namespace and under its own `#pragma GCC target`, and picks
// the widest variant the CPU supports at run time. No include guard on purpose, and no includes:
// lm_head_rows.cpp includes everything this needs first.
//
// The arithmetic is written on the target's native vectors of floats (GCC/Clang vector extensions,
// `vf` below; RF_VECTOR_BYTES, set by the includer, is 64 for AVX-512, 32 for AVX2, 16 for SSE): left
// to the auto-vectoriser, some of these loops came out scalar (max reductions, selects), 3-7x slower,
// and vectors wider than the target's registers are lowered badly.
//
// How a row is processed (the algorithm of kernels/lm_head_rows.py):
//   * row_stats: the vocabulary is walked in blocks of kBlock values. A block is transformed into an
//     L1-resident fp32 buffer while its maximum (and sum) are taken, then exp(s - max) and, for the
//     entropy, exp(s - max) * (s - max) are summed from the buffer: an online softmax with one exp per
//     logit and one read of the logits from memory. Block results are folded into the running max,
//     the rescaled sum and the entropy sum rebased to the new max, exactly as the Triton kernel does.
//   * ce_grad_ / logprob_grad_: one read and one write of the row. The target column is computed
//     afterwards from its saved input value, so the main loop has no per-column test.
// Sums run in kLanes = 16 accumulators (value i of a block goes to accumulator i % 16 on every
// instruction set), then a fixed tree: results depend neither on the thread count nor, beyond
// fused multiply-adds, on the instruction set.

typedef float vf __attribute__((vector_size(RF_VECTOR_BYTES)));
typedef int32_t vi __attribute__((vector_size(RF_VECTOR_BYTES)));   // comparison results, lane masks
typedef uint32_t vu __attribute__((vector_size(RF_VECTOR_BYTES)));  // bit patterns
typedef uint16_t vh __attribute__((vector_size(RF_VECTOR_BYTES / 2)));  // bf16 / fp16 storage bits

// Sizes. Measured on a 2-core AMD EPYC VM (Zen 4), one thread, fp32 logits [128, 151936], ms for
// row_stats / ce_grad_ with the avx512 | avx2 | default (SSE2) variants: 4.5 / 3.3 | 7.8 / 7.1 |
// 23 / 24 (benchmarks/bench_rows.py compares with torch). 32 accumulators instead of 16 measured
// no faster on any variant.
constexpr int64_t kWidth = RF_VECTOR_BYTES / 4;  // floats per vector
constexpr int64_t kLanes = 16;                   // accumulators per row sum
constexpr int64_t kUnroll = kLanes / kWidth;     // vectors per step of 16 values
constexpr int64_t kBlock = 2048;  // values per block of row_stats: an 8 KiB fp32 buffer (L1-resident)
static_assert(kLanes % kWidth == 0 && kBlock % kLanes == 0, "block, lanes and vector width must nest");

#define RF_INLINE inline __attribute__((always_inline))

template <typename To, typename From>
RF_INLINE To bit_cast(const From& from) {
  static_assert(sizeof(To) == sizeof(From), "bit_cast between types of different sizes");
  To to;
  std::memcpy(&to, &from, sizeof(To));
  return to;
}

RF_INLINE vf splat(float value) { return vf{} + value; }
RF_INLINE vu splat_u(uint32_t value) { return vu{} + value; }

// The 16 accumulators (kUnroll vectors), reduced in a fixed tree order.
RF_INLINE float lanes_max(const vf* acc) {
  float a[kLanes];
  std::memcpy(a, acc, sizeof(a));
  for (int64_t width = kLanes / 2; width >= 1; width /= 2)
    for (int64_t l = 0; l < width; ++l) a[l] = a[l + width] > a[l] ? a[l + width] : a[l];
  return a[0];
}

RF_INLINE float lanes_sum(const vf* acc) {
  float a[kLanes];
  std::memcpy(a, acc, sizeof(a));
  for (int64_t width = kLanes / 2; width >= 1; width /= 2)
    for (int64_t l = 0; l < width; ++l) a[l] += a[l + width];
  return a[0];
}

// ---- loads and stores of kWidth logits, any dtype, converted to / from fp32 ----
RF_INLINE vf load_vec(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

RF_INLINE vf load_vec(const c10::BFloat16* p) {
  vh bits;
  std::memcpy(&bits, p, sizeof(bits));
  return bit_cast<vf>(__builtin_convertvector(bits, vu) << 16);
}

RF_INLINE vf load_vec(const c10::Half* p) {
  // IEEE half -> float: rebias the exponent of normal numbers (15 -> 127), keep inf/NaN all-ones,
  // and scale subnormals (mantissa * 2^-24) through an exact int -> float conversion.
  vh raw;
  std::memcpy(&raw, p, sizeof(raw));
  const vu h = __builtin_convertvector(raw, vu);
  const vu magnitude = (h & 0x7FFFu) << 13;
  const vu exponent = h & 0x7C00u;
  const vu normal = magnitude + (112u << 23);
  const vu special = magnitude | 0x7F800000u;
  const vu subnormal = bit_cast<vu>(__builtin_convertvector(bit_cast<vi>(h & 0x03FFu), vf) * 0x1p-24f);
  const vu bits = exponent == 0x7C00u ? special : (exponent == 0u ? subnormal : normal);
  return bit_cast<vf>(bits | ((h & 0x8000u) << 16));
}

RF_INLINE void store_vec(float* p, vf v) { std::memcpy(p, &v, sizeof(v)); }

RF_INLINE void store_vec(c10::BFloat16* p, vf v) {
  // Round to nearest even; NaN -> 0x7FC0. The same bits as torch's float -> bfloat16.
  const vu bits = bit_cast<vu>(v);
  const vu rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
  const vu out = v != v ? splat_u(0x7FC0u) : rounded;
  const vh narrow = __builtin_convertvector(out, vh);
  std::memcpy(p, &narrow, sizeof(narrow));
}

RF_INLINE void store_vec(c10::Half* p, vf v) {
  // float -> IEEE half, round to nearest even; NaN -> 0x7E00, overflow -> inf: the same bits as
  // torch's float -> float16.
  //   normal halves (|v| >= 2^-14): rebias the exponent (127 -> 15) and round the 13 dropped
  //     mantissa bits to nearest even; a carry into the exponent is the correct rounding up
  //     (to inf from 65520 on, where the result is set to inf directly);
  //   subnormal halves: |v| + 0.5 has an ulp of 2^-24, the half subnormal step, so the hardware's
  //     round-to-nearest-even of that addition rounds |v| to the half grid; its low bits are the result.
  const vu bits = bit_cast<vu>(v);
  const vu sign = (bits >> 16) & 0x8000u;
  const vu magnitude = bits & 0x7FFFFFFFu;
  const vu normal = (magnitude - (112u << 23) + 0xFFFu + ((magnitude >> 13) & 1u)) >> 13;
  const vu subnormal = bit_cast<vu>(bit_cast<vf>(magnitude) + 0.5f) - 0x3F000000u;
  const vu finite = magnitude < 0x38800000u ? subnormal : normal;
  const vu out = magnitude > 0x7F800000u ? splat_u(0x7E00u)
                                         : (magnitude >= 0x477FF000u ? splat_u(0x7C00u) : finite);
  const vh narrow = __builtin_convertvector(out | sign, vh);
  std::memcpy(p, &narrow, sizeof(narrow));
}

// Fewer than kWidth values (the end of a row or block).
template <typename T>
RF_INLINE vf load_tail(const T* p, int64_t count) {
  T tmp[kWidth] = {};
  std::memcpy(tmp, p, static_cast<size_t>(count) * sizeof(T));
  return load_vec(tmp);
}

template <typename T>
RF_INLINE void store_tail(T* p, vf v, int64_t count) {
  T tmp[kWidth];
  store_vec(tmp, v);
  std::memcpy(p, tmp, static_cast<size_t>(count) * sizeof(T));
}

RF_INLINE vi lanes_below(int64_t count) {
  vi lane;
  for (int64_t l = 0; l < kWidth; ++l) lane[l] = static_cast<int32_t>(l);
  return lane < static_cast<int32_t>(count);
}

// ---- exp and tanh ----
RF_INLINE vf exp_approx(vf x) {
  // exp(x) = 2^n exp(r), n = round(x / ln 2), r = x - n ln 2 in [-ln 2 / 2, ln 2 / 2] (ln 2 split in a
  // high part with few significant bits, so that n * high is exact). exp(r) by its Taylor polynomial of
  // degree 7: truncation error below r^8 / 8! < 6e-9, under half an fp32 ulp. Arguments below -87
  // (including -inf) give 0, where exp is under 1.7e-38; above 88 they saturate (never happens here:
  // every argument is a logit minus the row max or the log-sum-exp). NaN propagates.
  vf clamped = x < -87.0f ? splat(-87.0f) : x;
  clamped = clamped > 88.0f ? splat(88.0f) : clamped;
  constexpr float kShift = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer, kept in the low bits
  const vf shifted = clamped * 1.44269504088896341f + kShift;
  const vf n = shifted - kShift;
  const vf r = (clamped - n * 0.693145751953125f) - n * 1.42860682030941723212e-6f;
  vf p = splat(1.0f / 5040.0f);
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const vu exponent = bit_cast<vu>(shifted) - bit_cast<uint32_t>(kShift) + 127u;  // n + 127 in [1, 254]
  const vf result = p * bit_cast<vf>(exponent << 23);
  return x < -87.0f ? splat(0.0f) : result;
}

RF_INLINE vf tanh_approx(vf x) {
  // |x| >= 0.3: (1 - e) / (1 + e) with e = exp(-2|x|) <= 0.55 (no overflow, no cancellation).
  // |x| < 0.3: the odd Taylor series to x^11, truncation error below 2e-9 relative; the exp form
  // would lose relative precision there (1 - e cancels), an absolute error of cap * eps after the
  // soft-cap's multiplication.
  const vf magnitude = bit_cast<vf>(bit_cast<vu>(x) & 0x7FFFFFFFu);
  const vf e = exp_approx(-2.0f * magnitude);
  const vf large = (1.0f - e) / (1.0f + e);
  const vf x2 = magnitude * magnitude;
  vf p = splat(-1382.0f / 155925.0f);
  p = p * x2 + 62.0f / 2835.0f;
  p = p * x2 + -17.0f / 315.0f;
  p = p * x2 + 2.0f / 15.0f;
  p = p * x2 + -1.0f / 3.0f;
  const vf small = magnitude + magnitude * (x2 * p);
  const vf t = magnitude < 0.3f ? small : large;
  return x < 0.0f ? -t : t;
}

// Transformed logits: s = cap * tanh(z / cap) when soft-capped, then s * inv_temperature.
template <bool kCap>
RF_INLINE vf transformed(vf z, float inv_temperature, float cap) {
  if (kCap) z = cap * tanh_approx(z / cap);
  return z * inv_temperature;
}

// A vector of copies of one logit (for the target column).
template <typename T>
RF_INLINE vf broadcast_logit(T value) {
  T tmp[kWidth];
  for (int64_t l = 0; l < kWidth; ++l) tmp[l] = value;
  return load_vec(tmp);
}

// ---- row_stats ----
template <typename T, bool kCap, bool kSum, bool kEntropy>
void stats_row(const T* __restrict__ z, int64_t vocab, int64_t target, float inv_temperature, float cap,
               float* lse, float* target_logit, float* sum_logits, float* entropy) {
  alignas(64) float buf[kBlock];
  const float neg_inf = -std::numeric_limits<float>::infinity();
  float running_max = neg_inf;
  float denom = 0.0f;    // sum of exp(s - running_max)
  float shifted = 0.0f;  // sum of exp(s - running_max) * (s - running_max), for the entropy
  float total = 0.0f;
  for (int64_t start = 0; start < vocab; start += kBlock) {
    const T* __restrict__ block = z + start;
    const int64_t n = std::min(kBlock, vocab - start);
    const int64_t steps = n / kLanes, rest_start = steps * kLanes, rest = n - rest_start;

    // Sweep 1: transform into buf; block max and sum. The values after the last full step of 16 go
    // to the same accumulators as a full step would; unused lanes get -inf in buf (nothing for the
    // max, exp gives 0) and add nothing to the sum.
    vf lane_max[kUnroll], lane_sum[kUnroll];
    for (int64_t u = 0; u < kUnroll; ++u) {
      lane_max[u] = splat(neg_inf);
      lane_sum[u] = splat(0.0f);
    }
    for (int64_t i = 0; i < rest_start; i += kLanes) {
      for (int64_t u = 0; u < kUnroll; ++u) {
        const vf s = transformed<kCap>(load_vec(block + i + u * kWidth), inv_temperature, cap);
        std::memcpy(buf + i + u * kWidth, &s, sizeof(s));
        lane_max[u] = s > lane_max[u] ? s : lane_max[u];
        if (kSum) lane_sum[u] += s;
      }
    }
    for (int64_t u = 0; u * kWidth < rest; ++u) {
      const int64_t offset = rest_start + u * kWidth, count = std::min(kWidth, rest - u * kWidth);
      const vi used = lanes_below(count);
      const vf s = transformed<kCap>(load_tail(block + offset, count), inv_temperature, cap);
      const vf s_or_neg_inf = used ? s : splat(neg_inf);
      std::memcpy(buf + offset, &s_or_neg_inf, sizeof(s_or_neg_inf));
      lane_max[u] = s_or_neg_inf > lane_max[u] ? s_or_neg_inf : lane_max[u];
      if (kSum) lane_sum[u] += used ? s : splat(0.0f);
    }
    const float new_max = std::max(running_max, lanes_max(lane_max));
    if (kSum) total += lanes_sum(lane_sum);

    // Sweep 2 (from L1): exp(s - new_max), and its product with (s - new_max) for the entropy.
    vf lane_exp[kUnroll], lane_ent[kUnroll];
    for (int64_t u = 0; u < kUnroll; ++u) {
      lane_exp[u] = splat(0.0f);
      lane_ent[u] = splat(0.0f);
    }
    for (int64_t i = 0; i < rest_start; i += kLanes) {
      for (int64_t u = 0; u < kUnroll; ++u) {
        const vf d = load_vec(buf + i + u * kWidth) - new_max;
        const vf e = exp_approx(d);
        lane_exp[u] += e;
        if (kEntropy) lane_ent[u] += e * d;
      }
    }
    for (int64_t u = 0; u * kWidth < rest; ++u) {
      const int64_t offset = rest_start + u * kWidth, count = std::min(kWidth, rest - u * kWidth);
      const vf d = load_vec(buf + offset) - new_max;
      const vf e = exp_approx(d);
      lane_exp[u] += e;
      if (kEntropy) lane_ent[u] += lanes_below(count) ? e * d : splat(0.0f);  // 0 * -inf is NaN in unused lanes
    }

    // Fold the block into the running state (the first block finds denom = 0, running_max = -inf:
    // rescale is exp(-inf) = 0, and the max drop is taken as 0, not -inf * 0 = NaN).
    const float rescale = std::exp(running_max - new_max);
    if (kEntropy) {
      // sum e_old * (s - m_new) = sum e_old * (s - m_old) + (m_old - m_new) * sum e_old, then rescaled
      const float max_drop = denom > 0.0f ? running_max - new_max : 0.0f;
      shifted = rescale * (shifted + max_drop * denom) + lanes_sum(lane_ent);
    }
    denom = denom * rescale + lanes_sum(lane_exp);
    running_max = new_max;
  }
  const float log_denom = std::log(denom);
  *lse = running_max + log_denom;
  *target_logit = 0 <= target && target < vocab
                      ? transformed<kCap>(broadcast_logit(z[target]), inv_temperature, cap)[0]
                      : 0.0f;
  if (kSum) *sum_logits = total;
  // H = lse - E[s] = log(denom) - shifted / denom, both relative to the max: no cancellation of large logits
  if (kEntropy) *entropy = log_denom - shifted / denom;
}

template <typename T, bool kCap, bool kSum, bool kEntropy>
void stats_rows(const StatsArgs& a, int64_t begin, int64_t end) {
  const T* base = static_cast<const T*>(a.logits);
  for (int64_t row = begin; row < end; ++row) {
    stats_row<T, kCap, kSum, kEntropy>(
        base + row * a.row_stride, a.vocab, a.target[row], a.inv_temperature, a.softcap, a.lse + row,
        a.target_logit + row, kSum ? a.sum_logits + row : nullptr, kEntropy ? a.entropy + row : nullptr);
  }
}

template <typename T>
void stats_rows_dispatch(const StatsArgs& a, int64_t begin, int64_t end) {
  const bool cap = a.softcap > 0.0f;
  const int which = (cap ? 4 : 0) | (a.need_sum ? 2 : 0) | (a.need_entropy ? 1 : 0);
  switch (which) {
    case 0: return stats_rows<T, false, false, false>(a, begin, end);
    case 1: return stats_rows<T, false, false, true>(a, begin, end);
    case 2: return stats_rows<T, false, true, false>(a, begin, end);
    case 3: return stats_rows<T, false, true, true>(a, begin, end);
    case 4: return stats_rows<T, true, false, false>(a, begin, end);
    case 5: return stats_rows<T, true, false, true>(a, begin, end);
    case 6: return stats_rows<T, true, true, false>(a, begin, end);
    default: return stats_rows<T, true, true, true>(a, begin, end);
  }
}

void row_stats_range(const StatsArgs& a, int64_t begin, int64_t end) {
  switch (a.dtype) {
    case LogitsDtype::kFloat: return stats_rows_dispatch<float>(a, begin, end);
    case LogitsDtype::kBFloat16: return stats_rows_dispatch<c10::BFloat16>(a, begin, end);
    case LogitsDtype::kHalf: return stats_rows_dispatch<c10::Half>(a, begin, end);
  }
}

// ---- ce_grad_ ----
// g_j = row_scale * (p_j (1 + 2 z_loss lse) - eps / V - (1 - eps) [j == target]) * (cap ? 1 - t_j^2 : 1),
// p_j = exp(s_j - lse), s_j = cap * t_j with t_j = tanh(z_j / cap) when soft-capped (d s / d z = 1 - t^2).
struct CeRow {
  float lse, prob_coef, smooth, scale, cap;
};

template <bool kCap>
RF_INLINE vf ce_grad_values(vf z, const CeRow& r, float hit) {
  const vf t = kCap ? tanh_approx(z / r.cap) : splat(0.0f);
  const vf s = kCap ? r.cap * t : z;
  vf grad = exp_approx(s - r.lse) * r.prob_coef - r.smooth - hit;
  if (kCap) grad *= 1.0f - t * t;
  return grad * r.scale;
}

template <typename T, bool kCap>
void ce_grad_row(T* __restrict__ z, int64_t vocab, int64_t target, float lse, float row_scale, float label_smoothing,
                 float z_loss, float cap) {
  const int64_t full = vocab / kWidth, rest = vocab % kWidth;
  // z-loss: d(z_loss lse^2)/ds = 2 z_loss lse p
  const CeRow r{lse, 1.0f + 2.0f * z_loss * lse, label_smoothing / static_cast<float>(vocab), row_scale, cap};
  const bool has_target = 0 <= target && target < vocab;
  const T target_input = has_target ? z[target] : T(0.0f);
  for (int64_t k = 0; k < full; ++k) store_vec(z + k * kWidth, ce_grad_values<kCap>(load_vec(z + k * kWidth), r, 0.0f));
  if (rest) {
    T* tail = z + full * kWidth;
    store_tail(tail, ce_grad_values<kCap>(load_tail(tail, rest), r, 0.0f), rest);
  }
  if (has_target) {
    const vf g = ce_grad_values<kCap>(broadcast_logit(target_input), r, 1.0f - label_smoothing);
    store_tail(z + target, g, 1);
  }
}

template <typename T, bool kCap>
void ce_grad_rows(const CeGradArgs& a, int64_t begin, int64_t end) {
  T* base = static_cast<T*>(a.logits);
  for (int64_t row = begin; row < end; ++row) {
    ce_grad_row<T, kCap>(base + row * a.row_stride, a.vocab, a.target[row], a.lse[row], a.row_scale[row],
                         a.label_smoothing, a.z_loss, a.softcap);
  }
}

void ce_grad_range(const CeGradArgs& a, int64_t begin, int64_t end) {
  const bool cap = a.softcap > 0.0f;
  switch (a.dtype) {
    case LogitsDtype::kFloat:
      return cap ? ce_grad_rows<float, true>(a, begin, end) : ce_grad_rows<float, false>(a, begin, end);
    case LogitsDtype::kBFloat16:
      return cap ? ce_grad_rows<c10::BFloat16, true>(a, begin, end) : ce_grad_rows<c10::BFloat16, false>(a, begin, end);
    case LogitsDtype::kHalf:
      return cap ? ce_grad_rows<c10::Half, true>(a, begin, end) : ce_grad_rows<c10::Half, false>(a, begin, end);
  }
}

// ---- ce_stats_grad_: row_stats, then ce_grad_ with that lse, one row at a time ----
// The row is read from memory once, for its statistics, and is still in L2 when the gradient overwrites
// it (V fp32 values: 128 KiB at V = 32768, 594 KiB at 151936): one pass over the chunk from memory
// instead of two. The same arithmetic as the two kernels called one after the other.
template <typename T, bool kCap, bool kSum>
void ce_stats_grad_rows(const CeStatsGradArgs& a, int64_t begin, int64_t end) {
  T* base = static_cast<T*>(a.logits);
  for (int64_t row = begin; row < end; ++row) {
    T* z = base + row * a.row_stride;
    stats_row<T, kCap, kSum, false>(z, a.vocab, a.target[row], 1.0f, a.softcap, a.lse + row, a.target_logit + row,
                                    kSum ? a.sum_logits + row : nullptr, nullptr);
    ce_grad_row<T, kCap>(z, a.vocab, a.target[row], a.lse[row], a.row_scale[row], a.label_smoothing, a.z_loss,
                         a.softcap);
  }
}

template <typename T>
void ce_stats_grad_dispatch(const CeStatsGradArgs& a, int64_t begin, int64_t end) {
  const bool cap = a.softcap > 0.0f;
  if (cap) {
    return a.need_sum ? ce_stats_grad_rows<T, true, true>(a, begin, end) : ce_stats_grad_rows<T, true, false>(a, begin, end);
  }
  return a.need_sum ? ce_stats_grad_rows<T, false, true>(a, begin, end) : ce_stats_grad_rows<T, false, false>(a, begin, end);
}

void ce_stats_grad_range(const CeStatsGradArgs& a, int64_t begin, int64_t end) {
  switch (a.dtype) {
    case LogitsDtype::kFloat: return ce_stats_grad_dispatch<float>(a, begin, end);
    case LogitsDtype::kBFloat16: return ce_stats_grad_dispatch<c10::BFloat16>(a, begin, end);
    case LogitsDtype::kHalf: return ce_stats_grad_dispatch<c10::Half>(a, begin, end);
  }
}

// ---- logprob_grad_ ----
// g_j = inv_temperature * ([j == t] g - p_j (g + h (s_j - (lse - H)))),  s_j = z_j * inv_temperature.
struct LogprobRow {
  float lse, g, h, expected, inv_temperature;
};

template <bool kEntropyGrad>
RF_INLINE vf logprob_grad_values(vf z, const LogprobRow& r, float hit) {
  const vf s = z * r.inv_temperature;
  const vf p = exp_approx(s - r.lse);
  const vf coef = kEntropyGrad ? r.g + r.h * (s - r.expected) : splat(r.g);
  return (hit - p * coef) * r.inv_temperature;
}

template <typename T, bool kEntropyGrad>
void logprob_grad_rows(const LogprobGradArgs& a, int64_t begin, int64_t end) {
  T* base = static_cast<T*>(a.logits);
  const int64_t vocab = a.vocab, full = vocab / kWidth, rest = vocab % kWidth;
  for (int64_t row = begin; row < end; ++row) {
    T* __restrict__ z = base + row * a.row_stride;
    const float lse = a.lse[row];
    const float g = a.grad_logp != nullptr ? a.grad_logp[row] : 0.0f;
    const LogprobRow r{lse, g, kEntropyGrad ? a.grad_entropy[row] : 0.0f,
                       kEntropyGrad ? lse - a.entropy[row] : 0.0f,  // E_p[s] = lse - H
                       a.inv_temperature};
    const int64_t target = a.target[row];
    const bool has_target = 0 <= target && target < vocab;
    const T target_input = has_target ? z[target] : T(0.0f);
    for (int64_t k = 0; k < full; ++k)
      store_vec(z + k * kWidth, logprob_grad_values<kEntropyGrad>(load_vec(z + k * kWidth), r, 0.0f));
    if (rest) {
      T* tail = z + full * kWidth;
      store_tail(tail, logprob_grad_values<kEntropyGrad>(load_tail(tail, rest), r, 0.0f), rest);
    }
    if (has_target) store_tail(z + target, logprob_grad_values<kEntropyGrad>(broadcast_logit(target_input), r, g), 1);
  }
}

void logprob_grad_range(const LogprobGradArgs& a, int64_t begin, int64_t end) {
  const bool h = a.grad_entropy != nullptr;
  switch (a.dtype) {
    case LogitsDtype::kFloat:
      return h ? logprob_grad_rows<float, true>(a, begin, end) : logprob_grad_rows<float, false>(a, begin, end);
    case LogitsDtype::kBFloat16:
      return h ? logprob_grad_rows<c10::BFloat16, true>(a, begin, end)
               : logprob_grad_rows<c10::BFloat16, false>(a, begin, end);
    case LogitsDtype::kHalf:
      return h ? logprob_grad_rows<c10::Half, true>(a, begin, end) : logprob_grad_rows<c10::Half, false>(a, begin, end);
  }
}

#undef RF_INLINE
