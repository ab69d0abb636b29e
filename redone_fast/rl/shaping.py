"""DAPO's overlong reward shaping ("soft overlong punishment", DAPO paper eq. 13).

With L_max the response budget and L_cache the buffer: a response of length |y| gets
    0                                  if |y| <= L_max - L_cache
    ((L_max - L_cache) - |y|) / L_cache  if L_max - L_cache < |y| <= L_max
    -1                                 if |y| > L_max
times the penalty factor, added to its task reward. The paper's setting: L_max 8k response tokens, buffer
4096, factor 1.0. A response cut at the budget (|y| = L_max, no eos) gets the full -1.
"""
from __future__ import annotations

__all__ = ["overlong_penalty"]


def overlong_penalty(length: int, max_length: int, buffer: int, factor: float = 1.0) -> float:
    """The (non-positive) reward added to a response of `length` tokens; 0 when buffer is 0."""
    if buffer <= 0 or factor == 0:
        return 0.0
    if buffer > max_length:
        raise ValueError(f"overlong buffer ({buffer}) must not exceed the response budget ({max_length})")
    free = max_length - buffer
    if length <= free:
        return 0.0
    if length <= max_length:
        return factor * (free - length) / buffer
    return -factor
