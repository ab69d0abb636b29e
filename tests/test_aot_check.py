"""The ahead-of-time compile check: every Triton kernel variant compiled for sm_90a and sm_80, no GPU needed.

The test suite runs the kernels under TRITON_INTERPRET=1, which never type-checks; this is the check that
they also compile (and do not spill) for the GPUs they are written for. It runs in subprocesses with the
interpreter switched off, since conftest switches it on for this process.
"""
import json
import os
import subprocess
import sys
import textwrap

ENV = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}


def test_every_variant_compiles_for_sm90a_and_sm80_without_spills(tmp_path):
    report = tmp_path / "aot.json"
    out = subprocess.run([sys.executable, "-m", "redone_fast.kernels.aot_check", "--json", str(report)],
                         env=ENV, capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    data = json.loads(report.read_text())
    summary, results = data["summary"], data["results"]
    assert summary["targets"] == ["sm_90a", "sm_80"]
    assert summary["failures"] == 0 and summary["spills"] == 0
    assert summary["compiles"] == 2 * summary["variants"] == len(results)
    assert all(r["ok"] and r["registers"] > 0 for r in results)
    labels = " | ".join(r["label"] for r in results)
    for kernel in ("row_stats", "ce_grad", "logprob_grad"):
        for dtype in ("fp32", "bf16", "fp16"):
            assert f"{kernel} {dtype} " in labels
    for vocab in ("333", "4099", "32768", "151936"):
        assert vocab in labels
    for tokens in (0, 1):
        assert f"group_advantages scale_by_std=1 tokens={tokens}" in labels
    # The row kernels' vocabulary loop vectorises on the rows the ops give them (a 16-divisible stride),
    # for every vocabulary, V = 333 and 4099 included: some PTX global load is 8 or 16 bytes wide.
    rows = [r for r in results if not r["label"].startswith("group_advantages")]
    padded = [r for r in rows if "unpadded" not in r["label"]]
    assert len(padded) > len(rows) / 2
    for r in padded:
        assert {"v2", "v4"} & set(r["global_loads"]), r
        if " fp32 " in r["label"]:
            assert "v4" in r["global_loads"], r
    # one line per compile, then the summary line
    assert len([line for line in out.stdout.splitlines() if line.startswith("sm_")]) == len(results)
    assert "0 failures, 0 with spills" in out.stdout.splitlines()[-1]


def test_a_kernel_that_does_not_compile_is_reported_and_fails_the_run(tmp_path):
    # The bug the check was written for: a loop-carried int32 re-assigned an int64 (the old
    # group-advantages kernel). The interpreter runs it; the compiler refuses it.
    (tmp_path / "broken_kernel.py").write_text(textwrap.dedent("""
        import triton
        import triton.language as tl

        @triton.jit
        def widened(x_ptr, n):
            start = 0
            for i in range(0, n):
                start = tl.load(x_ptr + i)
            tl.store(x_ptr, start)
    """))
    code = textwrap.dedent("""
        import sys
        import broken_kernel
        sys.modules["redone_fast.kernels.broken_kernel"] = broken_kernel
        from redone_fast.kernels import aot_check
        v = aot_check._variant("broken_kernel:widened", [("x_ptr", "*i64"), ("n", "i32")], (), (), 4, "widened")
        result = aot_check.compile_variant(v, 90)
        print(result.ok, result.registers)
        print(result.error)
        print(aot_check.format_line(result))
        aot_check.variants = lambda: [v]
        sys.exit(aot_check.main(["--arch", "90", "--jobs", "1"]))
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=ENV, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 1, out.stderr[-3000:]
    ok_line, error, line = out.stdout.splitlines()[:3]
    assert ok_line == "False None"
    assert "int64" in error and "int32" in error
    assert line.startswith("sm_90a") and "FAIL (" in line
    assert "1 compiles (1 variants x 1 targets), 1 failures" in out.stdout.splitlines()[-1]


def test_refuses_to_run_under_the_interpreter():
    out = subprocess.run([sys.executable, "-m", "redone_fast.kernels.aot_check", "--list"],
                         env={**ENV, "TRITON_INTERPRET": "1"}, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    assert "TRITON_INTERPRET is set" in out.stderr
