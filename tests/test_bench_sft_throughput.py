"""benchmarks/bench_sft_throughput.py: the FLOPs formula by hand, the architectures' sizes, a CPU smoke run."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_sft_throughput.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_sft_throughput", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_model_flops_by_hand(bench):
    # tiny: H=64, I=128, 2 layers, 4 heads, 2 KV heads, head_dim 16, V=1000.
    # One layer's matmuls: q 64*64 + k 64*32 + v 64*32 + o 64*64 = 12288; MLP 3*64*128 = 24576 -> 36864.
    # Two layers: 73728; LM head 64*1000 = 64000; matmul params N = 137728.
    # Samples of 3 and 5 tokens: T = 8, causal pairs 3*4/2 + 5*6/2 = 6 + 15 = 21.
    # 6*N*T = 6*137728*8 = 6_610_944; attention 12 * 2 layers * (4*16) * 21 = 32_256.
    config = bench.arch_config("tiny")
    assert bench.layer_matmul_params(config) == 36_864
    assert bench.causal_pairs([3, 5]) == 21
    assert bench.model_flops(config, [3, 5]) == 6_643_200
    parts = bench.flop_breakdown(config, [3, 5])
    assert parts["dense_flops"] == 6_610_944 and parts["attention_flops"] == 32_256
    # AC recompute (hfu only): one more forward of the blocks, 2*8*73728 + 4*2*64*21 = 1_179_648 + 10_752.
    assert parts["ac_recompute_flops"] == 1_190_400


@pytest.mark.parametrize("arch, non_embedding", [("tiny", None), ("qwen3-0.6b", 0.44e9), ("qwen3-1.7b", 1.4e9),
                                                 ("qwen3-4b", 3.6e9)])
def test_arch_matmul_params_match_the_model(bench, arch, non_embedding):
    from transformers import AutoModelForCausalLM

    config = bench.arch_config(arch)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    layers = model.get_decoder().layers
    counted = sum(p.numel() for p in layers.parameters() if p.ndim == 2)
    parts = bench.flop_breakdown(config, [1])
    assert parts["matmul_params_non_embedding"] == counted
    assert parts["head_params"] == model.get_output_embeddings().weight.numel()
    assert model.config.tie_word_embeddings
    if non_embedding is not None:  # the model cards' "Number of Parameters (Non-Embedding)"
        assert counted == pytest.approx(non_embedding, rel=0.02)


def test_packed_micro_batch(bench):
    import random

    lengths = bench.sample_lengths(100, 40, 10, random.Random(0))
    assert sum(lengths) == 100 and all(1 <= n <= 40 for n in lengths)
    batch = bench.packed_micro_batch([3, 5], 50, torch.Generator().manual_seed(0))
    ids = batch.input_ids
    assert batch.position_ids.tolist() == [0, 1, 2, 0, 1, 2, 3, 4]
    assert batch.cu_seqlens.tolist() == [0, 3, 8] and batch.cu_seqlens.dtype == torch.int32
    assert batch.labels.tolist() == [ids[1], ids[2], -100, ids[4], ids[5], ids[6], ids[7], -100]
    assert batch.max_seqlen == 5


def test_cpu_smoke_run(bench, tmp_path, capsys):
    out = tmp_path / "sft.json"
    rc = bench.main(["--device", "cpu", "--arch", "tiny", "--head", "fused", "--head", "torch",
                     "--warmup", "1", "--steps", "1", "--tokens-per-micro-batch", "256",
                     "--sample-len", "96", "--sample-len-min", "32", "--peak-size", "512", "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "tokens/s" in printed and "MFU" in printed and "float32 matmul" in printed

    result = json.loads(out.read_text())
    assert result["suite"] == "sft_throughput" and result["device"]["type"] == "cpu"
    assert result["peak"]["dtype"] == "float32" and result["peak"]["used_tflops"] > 0
    rows = {r["head"]: r for r in result["rows"]}
    assert set(rows) == {"fused", "torch"}
    for row in rows.values():
        assert row["status"] == "ok", row
        assert row["tokens_per_s"] > 0
        assert 0 < row["mfu"] <= 1 and row["mfu"] <= row["hfu"]
        assert len(row["step_times_s"]) == 1
        assert row["peak_memory_bytes"] > 0
    # Same random weights for both heads: the first step's loss is the same (fp32 on CPU), near ln(1000).
    assert rows["fused"]["first_loss"] == pytest.approx(rows["torch"]["first_loss"], rel=1e-5)
    assert rows["fused"]["first_loss"] == pytest.approx(6.91, abs=0.1)

    arch = result["archs"]["tiny"]
    flat = [n for lengths in arch["sample_lengths"] for n in lengths]
    assert arch["tokens_per_step"] == sum(flat) == 256
    assert arch["model_flops_per_step"] == bench.model_flops(bench.arch_config("tiny"), flat)
    mfu = arch["model_flops_per_step"] / rows["torch"]["mean_step_s"] / (result["peak"]["used_tflops"] * 1e12)
    assert rows["torch"]["mfu"] == pytest.approx(mfu)
    assert result["targets"][0]["met"] is None  # the 4B GPU target is not evaluated on CPU
