"""`packed_sdpa` (redone_fast/attention.py): per-sample attention of a packed row equals attending to each
sample alone, forward and backward, on every route it takes; outside packed forwards it is "sdpa"."""
import pytest
import torch

transformers = pytest.importorskip("transformers")

from redone_fast.attention import NO_MASK, PACKED_SDPA, packed_sdpa_attention, segment_buckets  # noqa: E402
from redone_fast.model import load_model, model_body_and_head, packed_hidden_states  # noqa: E402
from test_model import VOCAB, packed_batch, per_sample_hidden, tiny_config  # noqa: E402

# Every bucket class from 1 to 64, several samples per class, unsorted.
LENGTHS = [5, 1, 9, 3, 33, 2, 17, 64, 6, 1, 40, 7, 12, 4]


def test_segment_buckets_cover_every_token_once():
    lengths = [5, 1, 9, 3, 8, 2, 16, 17, 4]
    cu = torch.tensor([0] + lengths).cumsum(0)
    seen = []
    for index, bucket_lengths, longest in segment_buckets(cu):
        assert index.shape == (len(bucket_lengths), longest) and longest == int(bucket_lengths.max())
        assert longest < 2 * int(bucket_lengths.min()) or longest == 1  # within a factor of two
        for row, n in zip(index, bucket_lengths.tolist()):
            start = int(row[0])
            assert start in cu[:-1].tolist()
            assert row[:n].tolist() == list(range(start, start + n))
            assert (row[n:] == start + n - 1).all()  # padding repeats the sample's last token
            seen += row[:n].tolist()
    assert sorted(seen) == list(range(sum(lengths)))
    assert [int(b[2]) for b in segment_buckets(cu)] == [1, 2, 4, 8, 16, 17]  # classes 1, 2, 3-4, 5-8, 9-16, 17-32


@pytest.mark.parametrize("arch", ["qwen3", "llama", "qwen2"])  # GQA: 4 query heads, 2 key/value heads
def test_packed_forward_and_gradients_equal_per_sample(arch):
    torch.manual_seed(0)
    packed_model = load_model(tiny_config(arch, max_position_embeddings=128), dtype=torch.float64)
    assert packed_model.config._attn_implementation == PACKED_SDPA  # the default
    # transformers' own sdpa, one sample at a time (eager would differ: it takes the softmax in fp32)
    reference = load_model(tiny_config(arch, max_position_embeddings=128), dtype=torch.float64,
                           attn_implementation="sdpa")
    reference.load_state_dict(packed_model.state_dict())
    samples, input_ids, position_ids, cu_seqlens, _ = packed_batch(LENGTHS)
    upstream = torch.randn(sum(LENGTHS), 32, dtype=torch.float64)

    packed = packed_hidden_states(packed_model, input_ids, position_ids, cu_seqlens)
    expected = per_sample_hidden(reference, samples)
    torch.testing.assert_close(packed, expected, rtol=1e-10, atol=1e-12)
    (packed * upstream).sum().backward()
    (expected * upstream).sum().backward()
    for (name, p), q in zip(packed_model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-9, atol=1e-12, msg=name)


def test_dense_mask_is_not_built(monkeypatch):
    """The per-sample route must not pay for the [1, 1, T, T] mask it would ignore."""
    import transformers.masking_utils as mu
    built = []
    monkeypatch.setattr(mu, "sdpa_mask", lambda *a, **k: built.append(1))
    mu.ALL_MASK_ATTENTION_FUNCTIONS.register(PACKED_SDPA, mu.sdpa_mask)
    try:
        model = load_model(tiny_config("qwen3"))
        _, input_ids, position_ids, cu_seqlens, _ = packed_batch(LENGTHS[:4])
        with torch.no_grad():
            packed_hidden_states(model, input_ids, position_ids, cu_seqlens)
    finally:
        monkeypatch.undo()
        mu.ALL_MASK_ATTENTION_FUNCTIONS.register(PACKED_SDPA, mu.sdpa_mask)
    assert built == []


def test_sliding_window_layers_fall_back_to_the_mask():
    """A window shorter than the longest sample cannot be kept per sample: those layers take transformers'
    sdpa route with its packed, windowed mask, and the result still equals each sample alone."""
    config = tiny_config("qwen3", use_sliding_window=True, sliding_window=4, max_window_layers=1)
    assert "sliding_attention" in config.layer_types
    torch.manual_seed(0)
    model = load_model(config, dtype=torch.float64)
    samples, input_ids, position_ids, cu_seqlens, _ = packed_batch([5, 1, 9, 3])
    with torch.no_grad():
        packed = packed_hidden_states(model, input_ids, position_ids, cu_seqlens)
        expected = per_sample_hidden(model, samples)
    torch.testing.assert_close(packed, expected, rtol=1e-10, atol=1e-12)


def test_no_mask_outside_the_per_sample_route_is_an_error():
    q = torch.randn(1, 2, 5, 4)
    module = torch.nn.Module()
    with pytest.raises(ValueError, match="cannot attend per sample"):
        packed_sdpa_attention(module, q, q, q, NO_MASK, cu_seq_lens_q=torch.tensor([0, 5]), sliding_window=2,
                              max_length_q=5)


def test_generation_is_sdpa_generation():
    """Outside packed forwards (KV cache, left padding) the implementation is "sdpa" itself."""
    torch.manual_seed(0)
    ours = load_model(tiny_config("qwen3"))
    sdpa = load_model(tiny_config("qwen3"), attn_implementation="sdpa")
    sdpa.load_state_dict(ours.state_dict())
    prompts = torch.randint(3, VOCAB, (2, 6))
    mask = torch.ones_like(prompts)
    prompts[0, :2], mask[0, :2] = 0, 0  # left padding
    settings = dict(attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0,
                    return_dict_in_generate=True, output_logits=True)
    a, b = ours.generate(prompts, **settings), sdpa.generate(prompts, **settings)
    assert torch.equal(a.sequences, b.sequences)
    for x, y in zip(a.logits, b.logits):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


def test_body_alone_without_cu_seqlens_is_causal_sdpa():
    torch.manual_seed(0)
    ours = load_model(tiny_config("qwen3"))
    body, _ = model_body_and_head(ours)
    ids = torch.randint(0, VOCAB, (1, 9))
    with torch.no_grad():
        full = body(input_ids=ids, use_cache=False).last_hidden_state
        prefix = body(input_ids=ids[:, :4], use_cache=False).last_hidden_state
    torch.testing.assert_close(full[:, :4], prefix, rtol=0, atol=2e-6)


def test_the_plan_follows_the_packing():
    """The bucket plan is built once per forward and reused by the other layers: a new packing, or the same
    tensor changed in place, must get a new plan (each result equal to its samples alone)."""
    torch.manual_seed(0)
    model = load_model(tiny_config("qwen3"), dtype=torch.float64)
    first = [5, 1, 9, 3]
    second = [3, 9, 1, 5]  # the same total, so one cu_seqlens tensor can hold either
    samples, input_ids, position_ids, cu_seqlens, _ = packed_batch(first)
    samples2, input_ids2, position_ids2, cu_seqlens2, _ = packed_batch(second)
    with torch.no_grad():
        torch.testing.assert_close(packed_hidden_states(model, input_ids, position_ids, cu_seqlens),
                                   per_sample_hidden(model, samples), rtol=1e-10, atol=1e-12)
        cu_seqlens.copy_(cu_seqlens2)  # in place: the cached plan must not be reused
        torch.testing.assert_close(packed_hidden_states(model, input_ids2, position_ids2, cu_seqlens),
                                   per_sample_hidden(model, samples2), rtol=1e-10, atol=1e-12)
