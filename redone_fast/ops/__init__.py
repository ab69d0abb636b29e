"""The fused ops (docs/design.md, "The ops"). Each picks its backend from the tensors' device; see _backend.py."""
from redone_fast.ops.group_advantages import GroupAdvantages, group_advantages, group_advantages_ref
from redone_fast.ops.linear_cross_entropy import linear_cross_entropy, linear_cross_entropy_ref
from redone_fast.ops.linear_logprobs import linear_logprobs, linear_logprobs_ref
from redone_fast.ops.logprob_loss import linear_logprob_loss

__all__ = [
    "GroupAdvantages", "group_advantages", "group_advantages_ref",
    "linear_cross_entropy", "linear_cross_entropy_ref",
    "linear_logprobs", "linear_logprobs_ref", "linear_logprob_loss",
]
