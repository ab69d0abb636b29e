"""`packed_sdpa`: attention over a packed micro-batch at the cost of its samples, not of the packed row.

A packed micro-batch is one row of T tokens holding B samples. torch's SDPA has no variable-length entry
point, so the plain "sdpa" route gives it a dense block-causal [1, 1, T, T] mask: every query is scored
against all T keys and most scores are masked away, so a 2048-token row of 70-token samples does about
T / 70 = 30 times the attention work of its samples (issue 16: attention dominated the RL update on CPU).
flash-attn's varlen kernel avoids this on GPUs where it is installed; this function is the same idea in
plain torch, for every device:

- the samples (from `cu_seq_lens_q`, which `model.packed_hidden_states` passes, as for flash-attn) are
  grouped by length into buckets whose lengths are within a factor of two of each other;
- each bucket is gathered into a padded batch [n, heads, L, d] (L its longest sample; a shorter sample
  repeats its last token) and runs one causal SDPA call (torch's fused kernels: no mask tensor at all).
  Causality makes the padding harmless: a real query only sees keys at or before it, all real;
- the real rows are scattered back to their places in the packed row.

Work is at most 4x the samples' own (a sample padded to twice its length), usually near 1x, and never
grows with the number of samples in the row. The buckets are planned on the host from `cu_seq_lens_q` once
per forward (the first layer; the others reuse the plan): on CUDA one small device-to-host copy per forward.
Differentiable (gathers and SDPA). Registered with
transformers under the name `PACKED_SDPA`; without `cu_seq_lens_q` (generation, a single unpacked
sequence) and on sliding-window layers (the window needs the mask) it is exactly transformers' "sdpa",
mask included, so a model loaded with it generates as an "sdpa" model does.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

__all__ = ["PACKED_SDPA", "NO_MASK", "packed_sdpa_attention", "segment_buckets", "takes_per_sample_route"]

PACKED_SDPA = "packed_sdpa"
# Passed as the attention mask when every layer takes the per-sample route: transformers hands a 4-D mask
# through to the layers unchanged, so it skips building the dense [1, 1, T, T] mask (7% of a tiny-model
# update on CPU) that this route would ignore.
NO_MASK = torch.empty((1, 1, 0, 0), dtype=torch.bool)


def takes_per_sample_route(window: int | None, max_seqlen: int) -> bool:
    """Whether a layer with sliding window `window` (None: full attention) can attend per sample."""
    return window is None or window >= max_seqlen


def segment_buckets(cu_seqlens: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, int]]:
    """Group the samples of a packed row for padded attention.

    cu_seqlens [B + 1] (sample boundaries, starting at 0). Returns one (index [n, L], lengths [n], L) per
    bucket: index[i, j] is the packed position of token j of the bucket's sample i (the sample's last
    token repeated past its end). A bucket holds the samples whose length rounds up to the same power of
    two, so its longest sample is less than twice its shortest.
    """
    cu = cu_seqlens.to("cpu", torch.int64)
    starts, lengths = cu[:-1], cu[1:] - cu[:-1]
    size_class = torch.ceil(torch.log2(lengths.double())).long()  # 1 -> 0, 2 -> 1, 3..4 -> 2, ...
    buckets = []
    for cls in torch.unique(size_class).tolist():
        members = (size_class == cls).nonzero()[:, 0]
        bucket_lengths = lengths[members]
        longest = int(bucket_lengths.max())
        offsets = torch.minimum(torch.arange(longest)[None, :], bucket_lengths[:, None] - 1)
        buckets.append((starts[members][:, None] + offsets, bucket_lengths, longest))
    return buckets


# The plan of the last packed row: every layer of one forward gets the same `cu_seqlens` tensor, so the
# buckets, masks and inverse permutation are built (and, on CUDA, copied from the host) once per forward,
# not once per layer. Keyed by the tensor itself, its in-place version and the device.
_last_plan: tuple | None = None


def _segment_plan(cu_seqlens: torch.Tensor, device: torch.device):
    """([(index [n, L], real [n, L] bool, L) per bucket], order [T]) on `device`; `order` puts the buckets'
    concatenated real rows back into packed order."""
    global _last_plan
    key = (cu_seqlens, cu_seqlens._version, device)
    if _last_plan is not None and _last_plan[0] is key[0] and _last_plan[1:3] == key[1:]:
        return _last_plan[3]
    buckets, positions = [], []
    for index, lengths, longest in segment_buckets(cu_seqlens):
        real = torch.arange(longest)[None, :] < lengths[:, None]
        positions.append(index[real])
        buckets.append((index.to(device), real.to(device), longest))
    flat_positions = torch.cat(positions)
    order = torch.empty(flat_positions.numel(), dtype=torch.long)
    order[flat_positions] = torch.arange(flat_positions.numel())
    plan = (buckets, order.to(device))
    _last_plan = (*key, plan)
    return plan


def _segment_attention(query, key, value, cu_seqlens, scaling, dropout):
    """query [1, Hq, T, d], key/value [1, Hkv, T, d] -> [1, T, Hq, d], each sample attending to itself."""
    gqa = query.shape[1] != key.shape[1]
    buckets, order = _segment_plan(cu_seqlens, query.device)
    pieces = []
    for index, real, longest in buckets:
        # [1, H, n, L, d] -> [n, H, L, d]: one padded sequence per sample of the bucket
        q, k, v = (t[0][:, index].transpose(0, 1) for t in (query, key, value))
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=longest > 1, scale=scaling,
                                             enable_gqa=gqa)
        pieces.append(out.transpose(1, 2)[real])  # [tokens of the bucket, Hq, d]
    # Put the rows back in packed order: one gather by the inverse permutation.
    return torch.cat(pieces)[order][None]


def packed_sdpa_attention(module, query, key, value, attention_mask, dropout: float = 0.0,
                          scaling: float | None = None, is_causal: bool | None = None, **kwargs):
    """transformers' attention-function signature; see the module docstring for when it takes the
    per-sample route. query [B, Hq, T, d], key/value [B, Hkv, T, d] -> ([B, T, Hq, d], None)."""
    cu_seqlens = kwargs.get("cu_seq_lens_q")
    per_sample = (cu_seqlens is not None and query.shape[0] == 1 and query.shape[2] == key.shape[2]
                  and takes_per_sample_route(kwargs.get("sliding_window"),
                                             int(kwargs.get("max_length_q") or query.shape[2])))
    if not per_sample:
        if attention_mask is NO_MASK:
            raise ValueError(f"{PACKED_SDPA}: NO_MASK given, but this layer cannot attend per sample")
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    return _segment_attention(query, key, value, cu_seqlens, scaling, dropout), None


AttentionInterface.register(PACKED_SDPA, packed_sdpa_attention)
# The mask is "sdpa"'s: generation with padding and the sliding-window fallback need it as "sdpa" builds it.
ALL_MASK_ATTENTION_FUNCTIONS.register(PACKED_SDPA, sdpa_mask)
