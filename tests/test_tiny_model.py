"""The shipped tiny model and tokenizer: they load with transformers from the local folder, the
tokenizer round-trips emoji and carries the chat template, the model is the Qwen3 the build report
describes, and greedy answers are single lines whose exact match on the SNS tasks lies in a wide band
(a broken or retrained-wrong model fails; the model is never retrained here)."""
import functools
import json

import pytest
import torch

from redone_fast.data.corpus import SNS_TASKS
from redone_fast.data.formatting import encode_sample
from redone_fast.data.schema import load_jsonl
from redone_fast.tiny import data_path, model_path
from redone_fast.tiny.evaluate import evaluate, exact_match, greedy_answers, normalize, set_f1

SNS_EXACT_MATCH_TASKS = ("note_taxonomy", "hashtag_choice", "query_relevance")
PER_TASK = 20


@functools.cache
def tokenizer():
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(model_path(), local_files_only=True)


@functools.cache
def model():
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(model_path(), local_files_only=True, dtype=torch.float32).eval()


@functools.cache
def report():
    return json.loads((model_path() / "build_report.json").read_text())


@functools.cache
def eval_subset(tasks, per_task=PER_TASK):
    samples = load_jsonl(data_path("eval"))
    return [s for task in tasks for s in [x for x in samples if x.task == task][:per_task]]


def test_shipped_files_and_sizes():
    folder = model_path()
    for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                 "tokenizer_config.json", "special_tokens_map.json", "build_report.json"):
        assert (folder / name).is_file(), name
    assert (folder / "model.safetensors").stat().st_size < 12 * 2**20
    config = json.loads((folder / "tokenizer_config.json").read_text())
    assert "<|im_start|>" in config["chat_template"] and config["eos_token"] == "<|im_end|>"


def test_tokenizer_round_trips_emoji_and_has_chat_template():
    tok = tokenizer()
    for text in ("ngl this ramen slaps 🍜🔥 #foodie", "✈️🗺️ café crème, naïve — 100% 🥹", "Answer: 42\n"):
        assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    assert tok.eos_token == "<|im_end|>" and tok.pad_token is not None and tok.pad_token_id != tok.eos_token_id
    messages = [{"role": "user", "content": "hi 👋"}]
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == "<|im_start|>user\nhi 👋<|im_end|>\n<|im_start|>assistant\n"
    assert len(tok) <= model().config.vocab_size
    assert 2000 <= len(tok) <= 4096


def test_formatting_with_the_shipped_tokenizer():
    sample = load_jsonl(data_path("rl"))[0]
    encoded = encode_sample(tokenizer(), sample)
    target = tokenizer().decode([t for t, m in zip(encoded.input_ids, encoded.loss_mask) if m])
    assert target.endswith(sample.answer + "<|im_end|>")


def test_model_is_the_reported_qwen3():
    m = model()
    assert type(m).__name__ == "Qwen3ForCausalLM" and m.config.model_type == "qwen3"
    assert m.config.tie_word_embeddings and m.get_output_embeddings().weight is m.get_input_embeddings().weight
    params = sum(p.numel() for p in m.parameters())
    assert params == report()["parameters"]
    assert 500_000 < params < 5_000_000
    assert m.dtype == torch.float32
    assert m.generation_config.eos_token_id == tokenizer().eos_token_id


def test_greedy_answers_are_single_lines():
    samples = eval_subset(SNS_TASKS + ("arithmetic", "copying", "simple_qa"), per_task=2)
    answers = greedy_answers(model(), tokenizer(), samples, max_new_tokens=32)
    for sample, answer in zip(samples, answers):
        assert answer.strip() and "\n" not in answer.strip(), (sample.task, answer)


def test_shipped_eval_scores_lie_in_a_wide_band():
    scores = evaluate(model(), tokenizer(), eval_subset(SNS_EXACT_MATCH_TASKS), max_new_tokens=12)
    for task in SNS_EXACT_MATCH_TASKS:
        assert scores[task]["n"] == PER_TASK
        assert 0.05 <= scores[task]["exact_match"] <= 0.8, (task, scores[task])
    # the base model is stronger on general tasks than on SNS ones (so forgetting can be measured)
    general = evaluate(model(), tokenizer(), eval_subset(("copying", "simple_qa")), max_new_tokens=24)
    assert min(row["exact_match"] for row in general.values()) >= 0.25, general
    sns_mean = sum(scores[t]["exact_match"] for t in SNS_EXACT_MATCH_TASKS) / len(SNS_EXACT_MATCH_TASKS)
    general_mean = sum(row["exact_match"] for row in general.values()) / len(general)
    assert general_mean >= sns_mean + 0.1, (general, scores)


def test_local_scoring():
    assert normalize("Answer: Food.\nbecause", single=True) == "food"
    assert exact_match(" #ootd", "#ootd", single=True) == 1.0 and exact_match("Food", "Travel") == 0.0
    assert set_f1("Paris, Tokyo", "Tokyo, Lima") == pytest.approx(0.5)
