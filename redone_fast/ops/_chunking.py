"""The chunked LM head shared by both ops: the [T, V] logits never exist whole.

Tokens are cut into chunks sized from a byte budget. Per chunk the two GEMMs run on the BLAS
(torch.mm: cuBLAS on GPU) into an fp32 logits chunk whatever the input dtype (`LMHead`), and a row
kernel turns it into statistics and, in place, into the gradient of the logits. Gradients are then
`dlogits @ W` (rows of grad_hidden, exact per chunk) and `dlogits^T @ h` (summed over chunks into an
fp32 accumulator; docs/design.md, "Invariants").
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Iterator

import torch

# Chunk rows are rounded down to a multiple of 64 (full GEMM tiles) once that loses at most 1/8 of
# the budget, else to a multiple of 8.
_ROW_ALIGN, _SMALL_ROW_ALIGN = 64, 8


def plan_chunk_rows(num_rows: int, vocab: int, bytes_per_logit: int, budget_bytes: int) -> int:
    """Rows per chunk so that `rows * vocab * bytes_per_logit <= budget_bytes` (at least one row).

    `bytes_per_logit` is what the backend keeps alive per logit: the logits element itself plus any
    chunk-sized temporaries of its row work.
    """
    rows = max(1, budget_bytes // max(1, vocab * bytes_per_logit))
    align = _ROW_ALIGN if rows >= 8 * _ROW_ALIGN else _SMALL_ROW_ALIGN
    if rows > align:
        rows -= rows % align
    return max(1, min(rows, num_rows))


@functools.lru_cache(maxsize=None)
def fp32_output_gemms(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether torch multiplies `dtype` matrices into an fp32 result directly on `device`
    (`torch.mm(..., out_dtype=torch.float32)` and `torch.addmm(..., out_dtype=...)`, cuBLAS on CUDA, torch
    >= 2.8). Probed once per device and dtype on a tiny product whose exact result is known; CPU builds have
    no such kernel (`aten::mm.dtype` is CUDA-only), and neither may an older or another build."""
    if device.type != "cuda":
        return False
    try:
        a = torch.tensor([[1.0, 2.0], [3.0, 4.0]], device=device).to(dtype)
        acc = torch.ones(2, 2, device=device)
        logits = torch.zeros(2, 4, device=device)[:, :2]  # a padded chunk, as LMHead writes it
        torch.mm(a, a.t(), out_dtype=torch.float32, out=logits)
        torch.addmm(acc, a.t(), a, out_dtype=torch.float32, out=acc)
    except (RuntimeError, TypeError, NotImplementedError):
        return False
    expected = torch.tensor([[5.0, 11.0], [11.0, 25.0]], device=device)
    return logits.dtype == acc.dtype == torch.float32 and bool(torch.equal(logits, expected)) and bool(
        torch.equal(acc, torch.tensor([[11.0, 15.0], [15.0, 21.0]], device=device)))


class LMHead:
    """hidden [T, H] and weight [V, H] as the chunked GEMMs see them: every logits chunk is fp32, and every
    weight-gradient product lands in an fp32 accumulator, whatever the input dtype.

    A bf16 logits chunk would round each logit to 8 bits of mantissa before the row kernels upcast it:
    log-prob errors of 1e-3 to 3e-3 relative at V = 4099, as eager bf16 (issue 15; README "Precision"). The BLAS
    accumulates in fp32 anyway, so keeping its fp32 result costs no precision work, only bytes (4 per
    logit instead of 2; the chunk planner counts them). Low-precision inputs take one of two routes:

    * CUDA (`fp32_output_gemms`): the bf16/fp16 GEMMs write fp32 (`out_dtype`). Backward GEMMs take
      dlogits rounded once to the input dtype, as Liger-Kernel and every bf16 trainer feed cuBLAS; the
      weight-gradient product goes straight into the fp32 accumulator (no bf16 scratch round trip).
    * otherwise (CPU): the GEMMs run in fp32 on upcast operands. bf16 -> fp32 is exact, so this is the
      same product; it keeps one fp32 copy of the weight (4 V H bytes) for the op's lifetime.

    `row_align` > 1 pads each chunk row to a multiple of that many elements (the chunk is a [n, V] view of
    an [n, V_padded] buffer, written in place by the GEMM): the Triton row kernels' loads only vectorise
    when the row stride is provably 16-divisible, and a tokenizer's V often is not (4099, 151665).
    """

    def __init__(self, hidden: torch.Tensor, weight: torch.Tensor, row_align: int = 1):
        self.hidden, self.weight = hidden, weight
        self.padded_vocab = -(-weight.shape[0] // row_align) * row_align
        self.low_precision = hidden.dtype != torch.float32
        self.native = self.low_precision and fp32_output_gemms(hidden.device, hidden.dtype)
        self._weight32 = weight.float() if self.low_precision and not self.native else None

    def chunk_buffer(self, rows: int) -> torch.Tensor:
        """An fp32 [rows, padded_vocab] buffer for `logits(..., out=)`."""
        return torch.empty(rows, self.padded_vocab, dtype=torch.float32, device=self.hidden.device)

    def logits(self, start: int, end: int, buffer: torch.Tensor | None = None) -> torch.Tensor:
        """fp32 logits [end - start, V] of tokens start..end (rows `padded_vocab` apart), written into the
        first rows of `buffer` (from `chunk_buffer`) when given."""
        rows = self.hidden[start:end]
        vocab = self.weight.shape[0]
        if buffer is None:
            buffer = self.chunk_buffer(end - start)
        out = buffer[: end - start, :vocab]
        if not self.low_precision:
            return torch.mm(rows, self.weight.t(), out=out)
        if self.native:
            return torch.mm(rows, self.weight.t(), out_dtype=torch.float32, out=out)
        return torch.mm(rows.float(), self._weight32.t(), out=out)

    def gemm_operand(self, dlogits: torch.Tensor) -> torch.Tensor:
        """dlogits (fp32) as the backward GEMMs take it: the input dtype on the native route."""
        return dlogits.to(self.hidden.dtype) if self.native else dlogits

    def grad_hidden_rows(self, dlogits: torch.Tensor, out: torch.Tensor) -> None:
        """out [n, H] (the input dtype) = dlogits @ weight, rounded to the input dtype once."""
        if not self.low_precision or self.native:
            torch.mm(dlogits, self.weight, out=out)
        else:
            out.copy_(torch.mm(dlogits, self._weight32))

    def add_grad_weight(self, acc: torch.Tensor, start: int, end: int, dlogits: torch.Tensor) -> None:
        """acc [V, H] fp32 += dlogits^T @ hidden[start:end], the product formed in fp32."""
        rows = self.hidden[start:end]
        if self.native:
            torch.addmm(acc, dlogits.t(), rows, out_dtype=torch.float32, out=acc)
        else:
            acc.addmm_(dlogits.t(), rows.float() if self.low_precision else rows)


def logit_chunks(head: LMHead, chunk_rows: int) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Yield (start, end, fp32 logits [end - start, V]).

    Every chunk is written into one buffer allocated once: a chunk is consumed before the next is asked
    for, and a fresh chunk-sized allocation per chunk costs its page faults again each time on CPU (a
    64 MiB chunk is above glibc's mmap threshold: every allocation is new, zero-filled pages)."""
    num_tokens = head.hidden.shape[0]
    buffer = head.chunk_buffer(min(chunk_rows, num_tokens))
    for start in range(0, num_tokens, chunk_rows):
        end = min(start + chunk_rows, num_tokens)
        yield start, end, head.logits(start, end, buffer)


class HeadGradients:
    """Accumulates grad_hidden [T, H] (input dtype) and grad_weight [V, H] from per-chunk fp32 dlogits.

    The weight gradient sums over every chunk, so it accumulates in fp32 whatever the input dtype and is
    rounded to the input dtype once, at the end."""

    def __init__(self, head: LMHead, need_hidden: bool, need_weight: bool):
        self.head = head
        self.grad_hidden = torch.empty_like(head.hidden) if need_hidden else None
        self._acc = None
        if need_weight:
            self._acc = torch.zeros(head.weight.shape, dtype=torch.float32, device=head.weight.device)

    def add_chunk(self, start: int, end: int, dlogits: torch.Tensor) -> None:
        """dlogits: [end - start, V] fp32, the gradient of the loss w.r.t. this chunk's logits."""
        operand = self.head.gemm_operand(dlogits)
        if self.grad_hidden is not None:
            self.head.grad_hidden_rows(operand, self.grad_hidden[start:end])
        if self._acc is not None:
            self.head.add_grad_weight(self._acc, start, end, operand)

    def result(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        grad_weight, self._acc = self._acc, None
        if grad_weight is not None and self.head.weight.dtype != torch.float32:
            grad_weight = grad_weight.to(self.head.weight.dtype)
        return self.grad_hidden, grad_weight


def backward_through_head(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    chunk_rows: int,
    logits_to_grad_: Callable[[int, int, torch.Tensor], None],
    need_hidden: bool,
    need_weight: bool,
    row_align: int = 1,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Recompute each logits chunk, let `logits_to_grad_(start, end, logits)` overwrite it with
    dlogits (applying the per-token upstream gradients), and accumulate both input gradients."""
    head = LMHead(hidden, weight, row_align)
    grads = HeadGradients(head, need_hidden, need_weight)
    for start, end, logits in logit_chunks(head, chunk_rows):
        logits_to_grad_(start, end, logits)
        grads.add_chunk(start, end, logits)
    return grads.result()


def or_empty(tensor: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """Custom ops cannot return None: a gradient that was not asked for travels as an empty tensor."""
    return tensor if tensor is not None else like.new_empty(0)
