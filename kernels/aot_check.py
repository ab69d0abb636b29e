"""Compile every Triton kernel variant the launchers can ask for, for real GPU targets, on any machine.

    python -m redone_fast.kernels.aot_check                 # sm_90a and sm_80, every variant
    python -m redone_fast.kernels.aot_check --arch 90 --json report.json --jobs 4

The Triton interpreter (how the tests run the kernels on CPU) runs one program at a time and never
type-checks, so a kernel that passes there can still fail to compile. `triton.compile` with an explicit
`GPUTarget` needs no GPU and no driver: it lowers to PTX and runs the ptxas bundled with triton to a
cubin. This module does that for each variant and prints one line per variant with the registers,
spilled bytes, stack frame and shared memory ptxas and triton report, and the PTX global loads by vector
width (`ld.global v4:4 v1:2`: whether the vocabulary loop's loads vectorised). Exit status 1 when any
variant fails to compile or spills; 0 otherwise.

A variant is everything that makes the JIT compile a new binary: the logits dtype (fp32, bf16, fp16), each
constexpr combination (softcap, sum, entropy, gradient inputs; group advantages with and without token
ranges and std scaling), the vocabulary block and warp count `lm_head_rows._launch_config` picks for the
vocabulary sizes of real tokenizers (333 and 4099 odd, 32768, 151936 Qwen), and the 16-divisibility the
JIT infers for integer arguments (the vocabulary is a multiple of 16 or not; the row stride is one on the
chunks the ops pass, which pad rows to `lm_head_rows.ROW_ALIGN`, and may not be on a direct call:
"unpadded"). Pointers are
marked 16-byte aligned, as torch's allocator gives them. Vocabulary sizes that give the same binary are
compiled once and listed together.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from itertools import product

VOCABS = (333, 4099, 32768, 151936)
LOGIT_DTYPES = ("fp32", "bf16", "fp16")
ARCHS = (90, 80)  # GPUTarget capability: 90 compiles for sm_90a (H100/H200), 80 for sm_80 (A100)


@dataclass(frozen=True)
class Variant:
    kernel: str  # module:function
    signature: tuple  # ((arg name, triton type), ...), constexprs typed "constexpr"
    constexprs: tuple  # ((name, value), ...)
    divisible: tuple  # integer / pointer argument names marked 16-divisible
    num_warps: int
    label: str  # what a reader needs to recognise the variant

    def key(self):
        return (self.kernel, self.signature, self.constexprs, self.divisible, self.num_warps)


@dataclass
class Result:
    arch: str
    label: str
    ok: bool
    registers: int | None = None
    spill_stores: int | None = None
    spill_loads: int | None = None
    stack_bytes: int | None = None
    shared_bytes: int | None = None
    global_loads: dict = field(default_factory=dict)  # PTX ld.global instructions by vector width
    seconds: float = 0.0
    error: str = ""
    notes: list = field(default_factory=list)


def _pointers(names, dtype):
    return [(name, f"*{dtype}") for name in names]


def _row_variants():
    from redone_fast.kernels import lm_head_rows as rows

    configs = {}  # (block, warps, vocab 16-divisible, row stride 16-divisible) -> vocabularies
    for vocab in VOCABS:
        block, warps = rows._launch_config(vocab)
        # The ops pad chunk rows to ROW_ALIGN (a 16-divisible stride); a direct call may pass V itself.
        for stride_divisible in {True, vocab % rows.ROW_ALIGN == 0}:
            configs.setdefault((block, warps, vocab % 16 == 0, stride_divisible), []).append(vocab)
    for (block, warps, divisible, stride_divisible), vocabs in configs.items():
        vocab_label = "V=" + ",".join(map(str, vocabs)) + ("" if stride_divisible else " unpadded")
        ints = ("stride_row",) * stride_divisible + ("vocab",) * divisible
        for dtype in LOGIT_DTYPES:
            common = [("logits_ptr", f"*{dtype}"), ("stride_row", "i32"), ("target_ptr", "*i64")]
            for softcap, need_sum, need_entropy in product((False, True), repeat=3):
                sig = common + _pointers(("lse_ptr", "target_logit_ptr", "sum_ptr", "entropy_ptr"), "fp32") + [
                    ("vocab", "i32"), ("inv_temperature", "fp32"), ("softcap", "fp32")]
                const = (("HAS_SOFTCAP", softcap), ("NEED_SUM", need_sum), ("NEED_ENTROPY", need_entropy),
                         ("BLOCK_V", block))
                yield _variant("lm_head_rows:_row_stats_kernel", sig, const, ints, warps,
                               f"row_stats {dtype} {vocab_label} softcap={int(softcap)} sum={int(need_sum)} "
                               f"entropy={int(need_entropy)}")
            for softcap in (False, True):
                sig = common + _pointers(("lse_ptr", "scale_ptr"), "fp32") + [
                    ("vocab", "i32"), ("label_smoothing", "fp32"), ("z_loss", "fp32"), ("softcap", "fp32")]
                const = (("HAS_SOFTCAP", softcap), ("BLOCK_V", block))
                yield _variant("lm_head_rows:_ce_grad_kernel", sig, const, ints, warps,
                               f"ce_grad {dtype} {vocab_label} softcap={int(softcap)}")
            for grad_logp, grad_entropy in product((False, True), repeat=2):
                sig = common + _pointers(("lse_ptr", "entropy_ptr", "grad_logp_ptr", "grad_entropy_ptr"),
                                         "fp32") + [("vocab", "i32"), ("inv_temperature", "fp32")]
                const = (("HAS_GRAD_LOGP", grad_logp), ("HAS_GRAD_ENTROPY", grad_entropy), ("BLOCK_V", block))
                yield _variant("lm_head_rows:_logprob_grad_kernel", sig, const, ints, warps,
                               f"logprob_grad {dtype} {vocab_label} grad_logp={int(grad_logp)} "
                               f"grad_entropy={int(grad_entropy)}")


def _group_advantages_variants():
    from redone_fast.kernels import group_advantages as ga

    sig = [("rewards_ptr", "*fp32"), ("group_ids_ptr", "*i64"), ("ranges_ptr", "*i64")]
    sig += _pointers(("seq_ptr", "tok_ptr", "mean_ptr", "std_ptr"), "fp32") + [("keep_ptr", "*i1")]
    sig += [("count_ptr", "*i32"), ("sum_ptr", "*fp64"), ("sq_ptr", "*fp64"), ("min_ptr", "*fp32"),
            ("max_ptr", "*fp32"), ("state_ptr", "*i32")]
    sig += [("num_samples", "i32"), ("num_groups", "i32"), ("num_tokens", "i32"), ("eps", "fp32"),
            ("num_programs", "i32")]
    for scale_by_std, has_tokens, divisible in product((False, True), repeat=3):
        const = (("SCALE_BY_STD", scale_by_std), ("HAS_TOKENS", has_tokens), ("BLOCK", ga.BLOCK),
                 ("TOKEN_BLOCK", ga.TOKEN_BLOCK), ("MAX_SPINS", ga.MAX_SPINS), ("PHASE", ga.ALL_PHASES.value))
        # num_programs is never specialised (do_not_specialize); the sizes are multiples of 16 or not.
        ints = ("num_samples", "num_groups", "num_tokens") if divisible else ()
        yield _variant("group_advantages:_group_advantages_kernel", sig, const, ints, ga.NUM_WARPS,
                       f"group_advantages scale_by_std={int(scale_by_std)} tokens={int(has_tokens)} "
                       f"sizes%16={'0' if divisible else 'any'}")


def _variant(kernel, sig, constexprs, divisible_ints, num_warps, label):
    signature = tuple(sig) + tuple((name, "constexpr") for name, _ in constexprs)
    pointers = tuple(name for name, kind in sig if kind.startswith("*"))
    return Variant(kernel, signature, tuple(constexprs), pointers + tuple(divisible_ints), num_warps, label)


def variants() -> list[Variant]:
    """Every variant, once."""
    unique = {}
    for variant in (*_row_variants(), *_group_advantages_variants()):
        unique.setdefault(variant.key(), variant)
    return list(unique.values())


_REGISTERS = re.compile(r"Used (\d+) registers")
_SPILLS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_STATIC_SMEM = re.compile(r"(\d+) bytes smem")


def _bundled_ptxas_log(ptx: str, arch: int) -> str:
    """ptxas -v on the PTX (when triton did not echo its own ptxas log)."""
    import triton

    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    with tempfile.TemporaryDirectory() as folder:
        source = os.path.join(folder, "kernel.ptx")
        with open(source, "w") as handle:
            handle.write(ptx)
        gpu = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
        done = subprocess.run([ptxas, "-v", f"--gpu-name={gpu}", source, "-o", os.path.join(folder, "k.cubin")],
                              capture_output=True, text=True)
    return done.stderr


_GLOBAL_LOAD = re.compile(r"\bld\.global(?:\.[a-z0-9_]+)*?(?:\.(v[248]))?\.[busf](?:8|16|32|64)\b")


def _global_load_widths(ptx: str) -> dict:
    """Count the PTX global loads by vector width ("v4", "v2", "v1"): whether the vocabulary loop's
    loads vectorised (a static count of instructions, not of executions)."""
    counts = {}
    for match in _GLOBAL_LOAD.finditer(ptx):
        width = match.group(1) or "v1"
        counts[width] = counts.get(width, 0) + 1
    return dict(sorted(counts.items(), reverse=True))


def compile_variant(variant: Variant, arch: int) -> Result:
    """Compile one variant for one target; never raises."""
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    arch_name = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
    result = Result(arch=arch_name, label=f"{variant.label} warps={variant.num_warps}", ok=False)
    module_name, function_name = variant.kernel.split(":")
    fn = getattr(importlib.import_module(f"redone_fast.kernels.{module_name}"), function_name)
    names = [name for name, _ in variant.signature]
    attrs = {(fn.arg_names.index(name),): [["tt.divisibility", 16]] for name in variant.divisible}
    source = ASTSource(fn, dict(variant.signature), dict(variant.constexprs), attrs)
    assert set(names) == set(fn.arg_names), f"{variant.kernel}: signature out of date"
    echoed = io.StringIO()
    started = time.perf_counter()
    try:
        with contextlib.redirect_stdout(echoed):  # TRITON_DUMP_PTXAS_LOG: triton prints its ptxas -v log
            compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32),
                                      options={"num_warps": variant.num_warps})
    except Exception as exc:  # a compile error is this tool's finding, reported on the variant's line
        result.seconds = time.perf_counter() - started
        result.error = " ".join(f"{type(exc).__name__}: {exc}".split())[-400:]
        return result
    result.seconds = time.perf_counter() - started
    log = echoed.getvalue()
    if not _REGISTERS.search(log):
        log = _bundled_ptxas_log(compiled.asm["ptx"], arch)
    registers, spills, static_smem = _REGISTERS.search(log), _SPILLS.search(log), _STATIC_SMEM.search(log)
    if registers is None or spills is None:
        result.error = "no ptxas -v report: " + " ".join(log.split())[-300:]
        return result
    result.registers = int(registers.group(1))
    result.stack_bytes, result.spill_stores, result.spill_loads = map(int, spills.groups())
    result.shared_bytes = int(compiled.metadata.shared) + (int(static_smem.group(1)) if static_smem else 0)
    result.global_loads = _global_load_widths(compiled.asm["ptx"])
    result.ok = result.spill_stores == 0 and result.spill_loads == 0
    if not result.ok:
        result.error = "spills"
    return result


def _compile_job(job):
    return compile_variant(*job)


def _worker_init():
    # A fresh cache per run: a cached binary skips ptxas, and so its register report.
    os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="redone_fast_aot_")
    os.environ["TRITON_DUMP_PTXAS_LOG"] = "1"
    os.environ["TRITON_ALWAYS_COMPILE"] = "1"


def format_line(result: Result) -> str:
    status = "ok" if result.ok else f"FAIL ({result.error})"
    if result.registers is None:
        return f"{result.arch:7s} {result.label:86s} {status}"
    loads = " ".join(f"{width}:{count}" for width, count in result.global_loads.items()) or "-"
    return (f"{result.arch:7s} {result.label:86s} regs {result.registers:3d}  spills {result.spill_stores}/"
            f"{result.spill_loads} B  stack {result.stack_bytes} B  smem {result.shared_bytes} B  "
            f"ld.global {loads:12s} {result.seconds:4.1f} s  {status}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m redone_fast.kernels.aot_check", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", type=int, action="append", choices=ARCHS,
                        help="target capability, repeatable (default: 90 and 80)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="compile processes")
    parser.add_argument("--json", metavar="PATH", help="also write every result as JSON")
    parser.add_argument("--list", action="store_true", help="list the variants without compiling")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("aot_check: TRITON_INTERPRET is set, so @triton.jit gives interpreter functions that cannot be "
              "compiled; run without it", file=sys.stderr)
        return 2
    archs = args.arch or list(ARCHS)
    todo = variants()
    if args.list:
        for variant in todo:
            print(f"{variant.label} warps={variant.num_warps}")
        print(f"{len(todo)} variants x {len(archs)} targets")
        return 0
    jobs = [(variant, arch) for arch in archs for variant in todo]
    started = time.perf_counter()
    results = []
    with ProcessPoolExecutor(max_workers=max(1, args.jobs), initializer=_worker_init) as pool:
        for result in pool.map(_compile_job, jobs):
            print(format_line(result), flush=True)
            results.append(result)
    failed = [r for r in results if not r.ok]
    import triton

    summary = {"triton": triton.__version__, "targets": [f"sm_{a}a" if a >= 90 else f"sm_{a}" for a in archs],
               "variants": len(todo), "compiles": len(results), "failures": len(failed),
               "spills": sum(1 for r in results if (r.spill_stores or 0) + (r.spill_loads or 0) > 0),
               "max_registers": max((r.registers or 0) for r in results) if results else 0,
               "seconds": round(time.perf_counter() - started, 1)}
    print(f"aot_check: {summary['compiles']} compiles ({summary['variants']} variants x {len(archs)} targets), "
          f"{summary['failures']} failures, {summary['spills']} with spills, max {summary['max_registers']} "
          f"registers, {summary['seconds']} s, triton {summary['triton']}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"summary": summary, "results": [asdict(r) for r in results]}, handle, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
