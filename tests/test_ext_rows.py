"""The C++ row kernels (torch.ops.redone_fast_C.row_stats / ce_grad_ / ce_stats_grad_ / logprob_grad_, through
redone_fast.ops._ext_rows) against float64, within the error budget of the torch row work
(redone_fast.ops._torch_rows) in fp32; their Meta implementations; torch.library.opcheck; and every
compiled instruction-set variant of the kernels (REDONE_FAST_CPU_ISA, in a child process)."""
import os
import subprocess
import sys

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from error_budget import assert_within_budget
from redone_fast._ext import has_extension

pytestmark = pytest.mark.skipif(not has_extension(), reason="the extension redone_fast._C is not built")

if has_extension():
    import redone_fast._C as _C  # noqa: F401  (registers torch.ops.redone_fast_C)
    from redone_fast.ops import _ext_rows, _torch_rows

    OPS = torch.ops.redone_fast_C

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# (rows, V): a single column, odd sizes below and above one 2048-value block, Qwen3's vocabulary.
SHAPES = [(1, 1), (3, 17), (7, 1003), (5, 4097), (2, 151936)]


def ids(value):
    return str(value).replace("torch.", "") if isinstance(value, torch.dtype) else None


def make_chunk(rows, vocab, dtype, *, scale=3.0, strided=False):
    """Logits [rows, V] (optionally a view with a row stride larger than V) and targets with ignored
    (-100) and out-of-range (V) entries."""
    if strided:
        wide = (torch.randn(rows, vocab + 11) * scale).to(dtype)
        logits = wide[:, 5:5 + vocab]
        assert not logits.is_contiguous() or rows == 1
    else:
        logits = (torch.randn(rows, vocab) * scale).to(dtype)
    target = torch.randint(0, vocab, (rows,))
    if rows >= 3:
        target[1] = -100
        target[2] = vocab
    return logits, target


def transformed64(logits, inv_temperature=1.0, softcap=0.0):
    s = logits.double()
    if softcap > 0.0:
        s = softcap * torch.tanh(s / softcap)
    return s * inv_temperature


def valid_targets(target, vocab):
    return (target >= 0) & (target < vocab)


def stats64(logits, target, inv_temperature, softcap):
    s = transformed64(logits, inv_temperature, softcap)
    vocab = s.shape[1]
    valid = valid_targets(target, vocab)
    lse = torch.logsumexp(s, dim=1)
    target_logit = torch.where(valid, s.gather(1, torch.where(valid, target, 0)[:, None])[:, 0], 0.0)
    log_p = s - lse[:, None]
    return lse, target_logit, s.sum(dim=1), -(log_p.exp() * log_p).sum(dim=1)


def one_hot(target, vocab):
    valid = valid_targets(target, vocab)
    hot = torch.zeros(target.shape[0], vocab, dtype=torch.float64)
    hot[valid, target[valid]] = 1.0
    return hot


def ce_grad64(logits, target, lse, row_scale, label_smoothing, z_loss, softcap):
    s = transformed64(logits, 1.0, softcap)
    vocab = s.shape[1]
    lse = lse.double()[:, None]
    grad = (s - lse).exp() * (1.0 + 2.0 * z_loss * lse) - label_smoothing / vocab
    grad = grad - (1.0 - label_smoothing) * one_hot(target, vocab)
    if softcap > 0.0:
        grad = grad * (1.0 - (s / softcap) ** 2)
    return grad * row_scale.double()[:, None]


def logprob_grad64(logits, target, lse, entropy, grad_logp, grad_entropy, inv_temperature):
    s = transformed64(logits, inv_temperature)
    vocab = s.shape[1]
    lse = lse.double()[:, None]
    p = (s - lse).exp()
    g = grad_logp.double()[:, None] if grad_logp is not None else torch.zeros_like(lse)
    coef = g.expand_as(s)
    if grad_entropy is not None:
        coef = coef + grad_entropy.double()[:, None] * (s - (lse - entropy.double()[:, None]))
    return inv_temperature * (one_hot(target, vocab) * g - p * coef)


@pytest.mark.parametrize("dtype", DTYPES, ids=ids)
@pytest.mark.parametrize("rows,vocab", SHAPES)
@pytest.mark.parametrize("inv_temperature,softcap", [(1.0, 0.0), (1 / 0.7, 0.0), (1.0, 5.0), (0.8, 30.0)])
def test_row_stats_against_float64(dtype, rows, vocab, inv_temperature, softcap):
    logits, target = make_chunk(rows, vocab, dtype)
    options = dict(inv_temperature=inv_temperature, softcap=softcap, need_sum=True, need_entropy=True)
    ours = _ext_rows.row_stats(logits, target, **options)
    theirs = _torch_rows.row_stats(logits, target, **options)
    truth = stats64(logits, target, inv_temperature, softcap)
    valid = valid_targets(target, vocab)
    for name, a, b, t in zip(("lse", "target_logit", "sum_logits", "entropy"), ours, theirs, truth):
        assert a.dtype == torch.float32 and a.shape == (rows,), name
        if name == "target_logit":  # torch's row work gathers column 0 for ignored rows: compare valid ones
            assert (a[~valid] == 0).all(), "an ignored target must give target_logit 0"
            a, b, t = a[valid], b[valid], t[valid]
        assert_within_budget(name, a, b, t, torch.float32)


def test_row_stats_returns_none_for_what_was_not_asked():
    logits, target = make_chunk(4, 300, torch.float32)
    lse, target_logit, sums, entropy = _ext_rows.row_stats(logits, target)
    assert sums is None and entropy is None
    full = _ext_rows.row_stats(logits, target, need_sum=True, need_entropy=True)
    assert torch.equal(lse, full[0]) and torch.equal(target_logit, full[1])
    raw = OPS.row_stats(logits, target, 1.0, 0.0, False, False)
    assert raw[2].shape == (0,) and raw[3].shape == (0,)


def test_row_stats_large_logits_entropy_has_no_cancellation():
    # Logits around 1e4 with a spread of a few units: lse - E[s] would lose everything in fp32.
    logits = 1e4 + torch.randn(3, 5000)
    target = torch.tensor([0, 1, 2])
    _, _, _, entropy = _ext_rows.row_stats(logits, target, need_entropy=True)
    truth = stats64(logits, target, 1.0, 0.0)[3]
    torch.testing.assert_close(entropy.double(), truth, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("dtype", DTYPES, ids=ids)
@pytest.mark.parametrize("rows,vocab", SHAPES)
@pytest.mark.parametrize("label_smoothing,z_loss,softcap", [(0.0, 0.0, 0.0), (0.1, 1e-3, 0.0), (0.2, 1e-2, 5.0)])
def test_ce_grad_against_float64(dtype, rows, vocab, label_smoothing, z_loss, softcap):
    logits, target = make_chunk(rows, vocab, dtype)
    lse = _torch_rows.row_stats(logits, target, softcap=softcap)[0]
    row_scale = torch.rand(rows) * valid_targets(target, vocab)  # 0 for ignored tokens, as the op passes
    options = dict(label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap)
    ours, theirs = logits.clone(), logits.clone()
    _ext_rows.ce_grad_(ours, target, lse, row_scale, **options)
    _torch_rows.ce_grad_(theirs, target, lse, row_scale, **options)
    truth = ce_grad64(logits, target, lse, row_scale, label_smoothing, z_loss, softcap)
    assert ours.dtype == dtype
    assert_within_budget("ce_grad", ours, theirs, truth, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=ids)
@pytest.mark.parametrize("rows,vocab", SHAPES)
@pytest.mark.parametrize("label_smoothing,z_loss,softcap", [(0.0, 0.0, 0.0), (0.1, 1e-3, 0.0), (0.2, 1e-2, 5.0)])
def test_ce_stats_grad_against_float64_and_the_two_kernels(dtype, rows, vocab, label_smoothing, z_loss, softcap):
    """The one-pass operator: statistics and gradient within budget of float64, and bit for bit what
    row_stats followed by ce_grad_ give (the same arithmetic, one row at a time)."""
    logits, target = make_chunk(rows, vocab, dtype)
    row_scale = torch.rand(rows) * valid_targets(target, vocab)
    options = dict(label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap)
    fused = logits.clone()
    lse, target_logit, sums = _ext_rows.ce_stats_grad_(fused, target, row_scale, need_sum=label_smoothing > 0,
                                                       **options)
    two_pass = logits.clone()
    lse2, target_logit2, sums2, _ = _ext_rows.row_stats(two_pass, target, softcap=softcap,
                                                        need_sum=label_smoothing > 0)
    _ext_rows.ce_grad_(two_pass, target, lse2, row_scale, **options)
    assert torch.equal(fused, two_pass) and torch.equal(lse, lse2) and torch.equal(target_logit, target_logit2)
    assert (sums is None) == (label_smoothing == 0) and (sums is None or torch.equal(sums, sums2))
    lse64, target64, sum64, _ = stats64(logits, target, 1.0, softcap)
    torch.testing.assert_close(lse.double(), lse64, rtol=2e-6, atol=2e-6)
    torch.testing.assert_close(target_logit.double(), target64, rtol=2e-6, atol=2e-6)
    truth = ce_grad64(logits, target, lse, row_scale, label_smoothing, z_loss, softcap)
    theirs = logits.clone()
    _torch_rows.ce_grad_(theirs, target, lse, row_scale, **options)
    assert_within_budget("ce_grad", fused, theirs, truth, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=ids)
@pytest.mark.parametrize("rows,vocab", SHAPES)
@pytest.mark.parametrize("grads", ["logp", "entropy", "both"])
@pytest.mark.parametrize("inv_temperature", [1.0, 1 / 0.7])
def test_logprob_grad_against_float64(dtype, rows, vocab, grads, inv_temperature):
    logits, target = make_chunk(rows, vocab, dtype)
    lse, _, _, entropy = _torch_rows.row_stats(logits, target, inv_temperature=inv_temperature, need_entropy=True)
    grad_logp = torch.randn(rows) if grads in ("logp", "both") else None
    grad_entropy = torch.randn(rows) if grads in ("entropy", "both") else None
    ours, theirs = logits.clone(), logits.clone()
    args = (lse, entropy, grad_logp, grad_entropy)
    _ext_rows.logprob_grad_(ours, target, *args, inv_temperature=inv_temperature)
    _torch_rows.logprob_grad_(theirs, target, *args, inv_temperature=inv_temperature)
    truth = logprob_grad64(logits, target, *args, inv_temperature)
    assert ours.dtype == dtype
    assert_within_budget("logprob_grad", ours, theirs, truth, dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=ids)
def test_low_precision_stores_round_like_torch(dtype):
    """A bf16/fp16 gradient is the fp32 gradient of the same values rounded exactly as torch rounds
    (nearest even), through fp16's subnormals and its overflow to inf (row scales 1e-6 to 1.5e5)."""
    logits, target = make_chunk(6, 4099, dtype)
    target[:] = torch.arange(6)  # every row has its one-hot term (|grad| up to 0.9 * row scale)
    lse = _torch_rows.row_stats(logits, target)[0]
    row_scale = torch.tensor([1e-6, 1e-3, 1.0, 1e3, 3e4, 1.5e5])
    low, high = logits.clone(), logits.float()
    _ext_rows.ce_grad_(low, target, lse, row_scale, label_smoothing=0.1)
    _ext_rows.ce_grad_(high, target, lse, row_scale, label_smoothing=0.1)
    assert torch.equal(low.view(torch.int16), high.to(dtype).view(torch.int16))
    if dtype == torch.float16:  # the subnormal and overflow cases were exercised
        assert high.to(dtype).isinf().any()
        assert ((high.abs() < 6e-5) & (high.to(dtype) != 0)).any()


def test_row_stride_and_untouched_neighbours():
    """A chunk that is a view into a wider buffer (row stride > V): same results as a contiguous
    copy, and the gradients never write outside the view."""
    for dtype in DTYPES:
        logits, target = make_chunk(5, 1003, dtype, strided=True)
        dense = logits.contiguous()
        for a, b in zip(_ext_rows.row_stats(logits, target, softcap=5.0, need_sum=True, need_entropy=True),
                        _ext_rows.row_stats(dense, target, softcap=5.0, need_sum=True, need_entropy=True)):
            assert torch.equal(a, b)
        lse = _torch_rows.row_stats(dense, target)[0]
        wide = logits._base.clone()
        view = wide[:, 5:5 + 1003]
        _ext_rows.ce_grad_(view, target, lse, torch.ones(5), z_loss=1e-3)
        _ext_rows.ce_grad_(dense, target, lse, torch.ones(5), z_loss=1e-3)
        assert torch.equal(view, dense)
        assert torch.equal(wide[:, :5], logits._base[:, :5])
        assert torch.equal(wide[:, 5 + 1003:], logits._base[:, 5 + 1003:])
        grad_logp = torch.randn(5)
        _ext_rows.logprob_grad_(view, target, lse, None, grad_logp, None)
        _ext_rows.logprob_grad_(dense, target, lse, None, grad_logp, None)
        assert torch.equal(view, dense)


def test_empty_chunk():
    logits, target = torch.empty(0, 50), torch.empty(0, dtype=torch.long)
    lse, target_logit, sums, entropy = _ext_rows.row_stats(logits, target, need_sum=True, need_entropy=True)
    assert lse.shape == target_logit.shape == sums.shape == entropy.shape == (0,)
    _ext_rows.ce_grad_(logits, target, lse, lse)
    _ext_rows.logprob_grad_(logits, target, lse, entropy, lse, lse)


def test_bad_arguments_are_reported():
    logits, target = make_chunk(4, 64, torch.float32)
    lse = torch.zeros(4)
    with pytest.raises(RuntimeError, match="float32, bfloat16 or float16"):
        OPS.row_stats(logits.double(), target, 1.0, 0.0, False, False)
    with pytest.raises(RuntimeError, match="contiguous along V"):
        OPS.row_stats(torch.randn(64, 4).t(), target, 1.0, 0.0, False, False)
    with pytest.raises(RuntimeError, match="2-D"):
        OPS.row_stats(logits[0], target, 1.0, 0.0, False, False)
    with pytest.raises(RuntimeError, match="target must have shape"):
        OPS.row_stats(logits, target[:3], 1.0, 0.0, False, False)
    with pytest.raises(RuntimeError, match="target must be Long"):
        OPS.row_stats(logits, target.int(), 1.0, 0.0, False, False)
    with pytest.raises(RuntimeError, match="row_scale must be Float"):
        OPS.ce_grad_(logits, target, lse, lse.double(), 0.0, 0.0, 0.0)
    with pytest.raises(RuntimeError, match="lse must have shape"):
        OPS.ce_grad_(logits, target, lse[:2], lse, 0.0, 0.0, 0.0)
    with pytest.raises(RuntimeError, match="grad_entropy needs the entropy"):
        OPS.logprob_grad_(logits, target, lse, None, None, lse, 1.0)
    with pytest.raises(RuntimeError, match="single memory location"):  # rows that alias, written in parallel
        OPS.ce_grad_(logits[:1].expand(4, 64), target, lse, lse, 0.0, 0.0, 0.0)


# ---------------------------------------------------------------------------------------------
# Meta implementations, fake tensors, opcheck, torch.compile
# ---------------------------------------------------------------------------------------------
def sample_args(device="cpu", dtype=torch.float32, rows=4, vocab=37):
    logits = torch.randn(rows, vocab, device=device).to(dtype)
    target = torch.randint(0, vocab, (rows,), device=device)
    vec = torch.rand(rows, device=device)
    return logits, target, vec


@pytest.mark.parametrize("dtype", DTYPES, ids=ids)
def test_meta_shapes(dtype):
    logits, target, vec = sample_args("meta", dtype)
    for need_sum in (False, True):
        for need_entropy in (False, True):
            outs = OPS.row_stats(logits, target, 1.0, 0.0, need_sum, need_entropy)
            assert [tuple(o.shape) for o in outs] == [(4,), (4,), (4,) if need_sum else (0,),
                                                      (4,) if need_entropy else (0,)]
            assert all(o.device.type == "meta" and o.dtype == torch.float32 for o in outs)
    assert OPS.ce_grad_(logits, target, vec, vec, 0.1, 0.0, 0.0) is None
    assert OPS.logprob_grad_(logits, target, vec, vec, vec, vec, 1.0) is None
    with pytest.raises(RuntimeError, match="lse must have shape"):
        OPS.ce_grad_(logits, target, vec[:2], vec, 0.1, 0.0, 0.0)
    for need_sum in (False, True):
        outs = OPS.ce_stats_grad_(logits, target, vec, 0.1, 0.0, 0.0, need_sum)
        assert [tuple(o.shape) for o in outs] == [(4,), (4,), (4,) if need_sum else (0,)]
    with pytest.raises(RuntimeError, match="row_scale must have shape"):
        OPS.ce_stats_grad_(logits, target, vec[:2], 0.1, 0.0, 0.0, False)


def test_fake_tensor_shapes():
    with FakeTensorMode() as mode:
        logits = torch.empty(6, 151936, dtype=torch.bfloat16)
        target = torch.empty(6, dtype=torch.long)
        lse, target_logit, sums, entropy = OPS.row_stats(logits, target, 1.0, 0.0, True, False)
        assert lse.shape == target_logit.shape == sums.shape == (6,) and entropy.shape == (0,)
        assert lse.fake_mode is mode
        OPS.ce_grad_(logits, target, lse, lse, 0.0, 0.0, 0.0)


@pytest.mark.parametrize("op", ["row_stats", "ce_grad_", "ce_stats_grad_", "logprob_grad_"])
def test_opcheck(op):
    logits, target, vec = sample_args()
    target[1] = -100
    args = {
        "row_stats": (logits, target, 0.8, 5.0, True, True),
        "ce_grad_": (logits, target, torch.logsumexp(logits, 1), vec, 0.1, 1e-3, 0.0),
        "ce_stats_grad_": (logits, target, vec, 0.1, 1e-3, 5.0, True),
        "logprob_grad_": (logits, target, torch.logsumexp(logits, 1), vec, vec, None, 1.0),
    }[op]
    torch.library.opcheck(getattr(OPS, op).default, args)


def test_compiled_row_ops_match_eager():
    """torch.compile(fullgraph=True) traces the ops through their Meta implementations (the mutating
    ones through auto-functionalization) and runs the same kernels."""

    def row_loss(logits, target, row_scale):
        lse, target_logit, _, entropy = OPS.row_stats(logits, target, 1.0, 0.0, False, True)
        grad = logits.clone()
        OPS.ce_grad_(grad, target, lse, row_scale, 0.0, 0.0, 0.0)
        return lse - target_logit, entropy, grad

    logits, target, row_scale = sample_args(rows=8, vocab=301)
    torch._dynamo.reset()
    eager = row_loss(logits, target, row_scale)
    compiled = torch.compile(row_loss, fullgraph=True, backend="aot_eager")(logits, target, row_scale)
    for a, b in zip(eager, compiled):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# Every compiled instruction-set variant
# ---------------------------------------------------------------------------------------------
def _supported_isas():
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    isas = ["default"]
    if " avx2" in flags and " fma" in flags:
        isas.append("avx2")
    if all(f" {f}" in flags for f in ("avx512f", "avx512bw", "avx512vl", "avx512dq")):
        isas.append("avx512")
    return isas


@pytest.mark.skipif(os.environ.get("REDONE_FAST_CPU_ISA") is not None, reason="already a child run")
@pytest.mark.parametrize("isa", ["default", "avx2"])
def test_every_isa_variant(isa):
    """The variants this process does not run (it runs the widest): this file's numerical tests in a
    child process with REDONE_FAST_CPU_ISA set (x86-64 only; the extension has one variant elsewhere)."""
    if isa not in _supported_isas() or _C.cpu_isa() == "default":
        pytest.skip(f"{isa} kernels are not compiled or not runnable on this CPU")
    if isa == _C.cpu_isa():
        pytest.skip(f"{isa} is what this process runs")
    env = dict(os.environ, REDONE_FAST_CPU_ISA=isa)
    check = subprocess.run(
        [sys.executable, "-c", "import torch, redone_fast._C as c; print(c.cpu_isa())"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert check.stdout.strip() == isa, check.stderr
    out = subprocess.run(
        [sys.executable, "-m", "pytest", __file__, "-q", "-x", "-p", "no:cacheprovider",
         "-k", "against_float64 or stores_round or stride or large_logits"],
        env=env, capture_output=True, text=True, timeout=600, cwd=os.path.dirname(__file__),
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
