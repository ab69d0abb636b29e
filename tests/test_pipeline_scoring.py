"""redone_fast.pipeline.scoring: greedy evaluation of the tiny model against its known scores, and the scoring
math, pass rates, ordering, too-long prompts, JSON and data-parallel sharding against a scripted engine."""
import json
import math
import threading
from types import SimpleNamespace

import pytest

from redone_fast.data.schema import Sample, load_jsonl
from redone_fast.pipeline import scoring
from redone_fast.pipeline.scoring import (
    EvalConfig,
    ModelScores,
    domain_means,
    evaluate_samples,
    first_per_task,
    generate_answers,
    generate_answers_flagged,
    open_engine,
    pass_rates,
    score_answers,
    task_domain,
)
from redone_fast.rollout.base import Rollout

# Greedy scores of the bundled tiny model on the bundled eval split (mean reward x 100, each sample's own reward).
TINY_SCORES = {"note_taxonomy": 34.0, "hashtag_choice": 35.0, "query_relevance": 9.0, "entity_extraction": 50.7,
               "slang_translation": 58.8, "arithmetic": 96.0, "copying": 99.0, "simple_qa": 98.0}
TINY_SNS, TINY_GENERAL = 37.5, 97.7


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --- a scripted engine: characters are token ids -------------------------------------------------------

class CharTokenizer:
    chat_template = "user text only"

    def apply_chat_template(self, messages, add_generation_prompt=True, tokenize=True):
        return [ord(c) for c in messages[-1]["content"]]

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i) for i in ids)


class ScriptedEngine:
    """Answers script[prompt] (a list; sampled calls take the first n, cycling); records every call."""

    def __init__(self, script: dict[str, list[str]], context: int | None = 10_000):
        self.script = script
        self.tokenizer = CharTokenizer()
        if context is not None:
            self.model = SimpleNamespace(config=SimpleNamespace(max_position_embeddings=context))
        self.calls = []
        self.lock = threading.Lock()

    def generate(self, prompts, sampling):
        with self.lock:
            self.calls.append(([self.tokenizer.decode(p) for p in prompts], sampling))
        out = []
        for index, ids in enumerate(prompts):
            texts = self.script[self.tokenizer.decode(ids)]
            group = []
            for j in range(sampling.n):
                text = texts[0] if sampling.greedy else texts[j % len(texts)]
                response = [ord(c) for c in text]
                group.append(Rollout(prompt_index=index, prompt_ids=list(ids), response_ids=response,
                                     logprobs=[-0.1] * len(response), finished=True, truncated=False))
            out.append(group)
        return out

    def prompts_seen(self):
        return [p for prompts, _ in self.calls for p in prompts]


def sample(task, prompt, answer, reward="exact_match", **params):
    return Sample(task=task, prompt=prompt, answer=answer, reward={"name": reward, "params": params})


# --- the bundled tiny model -----------------------------------------------------------------------------

def test_tiny_model_scores_on_the_bundled_eval_split():
    from redone_fast.tiny import data_path, model_path
    samples = load_jsonl(data_path("eval"))
    cfg = EvalConfig(max_new_tokens=40, batch_prompts=200)
    engine = open_engine(model_path(), cfg, device="cpu")
    scores = evaluate_samples(engine, samples, cfg)
    assert list(scores.tasks) == list(TINY_SCORES)  # file order
    for task, expected in TINY_SCORES.items():
        assert scores.tasks[task] == pytest.approx(expected, abs=0.5), task
        assert scores.counts[task] == 100
    assert scores.sns == pytest.approx(TINY_SNS, abs=0.5)
    assert scores.general == pytest.approx(TINY_GENERAL, abs=0.5)
    assert scores.too_long == 0


# --- scoring math, order, pass rates ----------------------------------------------------------------------

def test_scores_are_per_task_means_and_domain_macro_means():
    samples = [sample("arithmetic", "1+1", "2"), sample("arithmetic", "2+2", "4"),  # 1 of 2 right: 50
               sample("arithmetic", "3+3", "6"), sample("arithmetic", "4+4", "8"),  # 3 of 4 right: 75
               sample("entity_extraction", "ents?", "a, b", "set_f1"),  # set F1 of {a, c} vs {a, b}: 0.5
               sample("note_taxonomy", "cat?", "food", single=True)]  # right: 100
    engine = ScriptedEngine({"1+1": ["2"], "2+2": ["5"], "3+3": ["6"], "4+4": ["8"], "ents?": ["a, c"],
                             "cat?": ["food."]})
    scores = evaluate_samples(engine, samples, EvalConfig())
    assert scores.tasks == {"arithmetic": 75.0, "entity_extraction": 50.0, "note_taxonomy": 100.0}
    assert scores.counts == {"arithmetic": 4, "entity_extraction": 1, "note_taxonomy": 1}
    assert scores.sns == 75.0  # macro: (50 + 100) / 2, not weighted by counts
    assert scores.general == 75.0
    (prompts, sampling), = engine.calls
    assert sampling.greedy and sampling.n == 1 and sampling.max_new_tokens == 48


def test_answers_come_back_in_sample_order_whatever_the_engine_order():
    prompts = ["a" * 9, "bb", "c" * 5, "d", "e" * 7]  # the engine sees them sorted by length
    engine = ScriptedEngine({p: [p.upper()] for p in prompts})
    samples = [sample("copying", p, p.upper()) for p in prompts]
    answers = generate_answers(engine, samples)
    assert answers == [[p.upper()] for p in prompts]
    assert engine.prompts_seen() == sorted(prompts, key=len)


def test_score_answers_uses_each_samples_reward_and_a_failing_reward_scores_zero():
    samples = [sample("copying", "x", "abc"), sample("slang_translation", "y", "to be honest", "chrf"),
               Sample(task="copying", prompt="z", answer="abc", reward={"name": "no_such_reward", "params": {}})]
    scores = score_answers(samples, [["abc", "abd"], ["to be honest"], ["abc"]])
    assert scores[0] == [1.0, 0.0]
    assert scores[1] == [pytest.approx(1.0)]
    assert scores[2] == [0.0]  # unknown reward: scored 0, no exception
    with pytest.raises(ValueError):
        score_answers(samples, [["abc"]])


def test_score_answers_in_reward_workers_matches_in_process():
    samples = [sample("copying", "x", "abc"), sample("entity_extraction", "y", "a, b", "set_f1")]
    answers = [["abc", "ab"], ["b, a", "a"]]
    assert score_answers(samples, answers, reward_workers=1, timeout_s=30) == score_answers(samples, answers)


def test_pass_rates_count_answers_over_the_threshold():
    samples = [sample("arithmetic", "1+1", "2"), sample("entity_extraction", "ents?", "a, b", "set_f1"),
               sample("arithmetic", "2+2", "4")]
    engine = ScriptedEngine({"1+1": ["2", "3", "2", "2"],  # rewards 1, 0, 1, 1
                             "ents?": ["a", "a, b", "c", "a, c"],  # set F1 0.667, 1, 0, 0.5
                             "2+2": ["5"]})  # all wrong
    rates, means = pass_rates(engine, samples, k=4, temperature=0.7, max_new_tokens=9, threshold=0.5, seed=3)
    assert rates == [0.75, 0.75, 0.0]
    assert means == pytest.approx([0.75, (2 / 3 + 1 + 0 + 0.5) / 4, 0.0])
    (_, sampling), = engine.calls
    assert (sampling.n, sampling.temperature, sampling.max_new_tokens, sampling.seed) == (4, 0.7, 9, 3)
    strict, _ = pass_rates(engine, samples, k=4, temperature=0.7, threshold=0.9)
    assert strict == [0.75, 0.25, 0.0]  # the set-F1 answers of 0.667 and 0.5 no longer pass
    with pytest.raises(ValueError):
        pass_rates(engine, samples, k=0)


# --- too-long prompts -------------------------------------------------------------------------------------

def test_too_long_prompts_are_not_generated_score_zero_and_are_counted():
    # context 12, max_new_tokens 4: prompts of up to 8 characters fit, longer ones do not.
    fits, limit, over = "x" * 3, "y" * 8, "z" * 9
    samples = [sample("copying", fits, fits), sample("copying", limit, limit),
               sample("copying", over, "")]  # "" would match the empty answer: the score must still be 0
    engine = ScriptedEngine({fits: [fits], limit: [limit], over: [""]}, context=12)
    cfg = EvalConfig(max_new_tokens=4)
    answers, too_long = generate_answers_flagged(engine, samples, max_new_tokens=4)
    assert answers == [[fits], [limit], [""]] and too_long == [False, False, True]
    assert over not in engine.prompts_seen()
    scores = evaluate_samples(engine, samples, cfg)
    assert scores.too_long == 1
    assert scores.tasks["copying"] == pytest.approx(200 / 3)
    rates, means = pass_rates(engine, samples, k=2, max_new_tokens=4, threshold=0.0)
    assert rates[2] == 0.0 and means[2] == 0.0  # even with threshold 0
    assert rates[:2] == [1.0, 1.0]


def test_no_context_limit_known_means_no_check():
    long = "w" * 50
    engine = ScriptedEngine({long: [long]}, context=None)
    answers, too_long = generate_answers_flagged(engine, [sample("copying", long, long)], max_new_tokens=100)
    assert answers == [[long]] and too_long == [False]


# --- JSON, domains, selection ------------------------------------------------------------------------------

def test_a_domain_without_tasks_is_nan_and_null_in_json():
    assert task_domain("arithmetic") == "general" and task_domain("note_taxonomy") == "sns"
    assert task_domain("not/a-registered-task") == "sns"
    sns, general = domain_means({"arithmetic": 50.0, "copying": 70.0})
    assert math.isnan(sns) and general == 60.0
    scores = ModelScores(tasks={"arithmetic": 50.0, "copying": 70.0}, counts={"arithmetic": 2, "copying": 3},
                         sns=sns, general=general, too_long=1)
    data = scores.to_json()
    assert data == {"sns": None, "general": 60.0, "tasks": {"arithmetic": 50.0, "copying": 70.0},
                    "counts": {"arithmetic": 2, "copying": 3}, "too_long": 1}
    back = ModelScores.from_json(json.loads(json.dumps(data, allow_nan=False)))
    assert math.isnan(back.sns) and back.general == 60.0 and back.tasks == scores.tasks
    assert back.counts == scores.counts and back.too_long == 1


def test_max_samples_per_task_keeps_the_first_n_of_each_task():
    samples = [sample("copying", f"c{i}", f"c{i}") for i in range(4)] + \
              [sample("arithmetic", f"a{i}", "0") for i in range(3)] + [sample("copying", "c9", "c9")]
    assert [s.prompt for s in first_per_task(samples, 2)] == ["c0", "c1", "a0", "a1"]
    assert first_per_task(samples, 0) == samples
    engine = ScriptedEngine({s.prompt: [s.prompt] for s in samples})
    scores = evaluate_samples(engine, samples, EvalConfig(max_samples_per_task=2))
    assert scores.counts == {"copying": 2, "arithmetic": 2}
    assert scores.tasks == {"copying": 100.0, "arithmetic": 0.0}
    assert sorted(engine.prompts_seen()) == ["a0", "a1", "c0", "c1"]


def test_eval_config_and_engine_choice_are_checked():
    with pytest.raises(ValueError, match="engine"):
        EvalConfig(engine="tgi")
    with pytest.raises(ValueError, match="max_new_tokens"):
        EvalConfig(max_new_tokens=0)
    from redone_fast.rollout.vllm_engine import vllm_available
    if vllm_available():
        pytest.skip("vllm is installed here: VLLMEngine would start a real engine")
    from redone_fast.tiny import model_path
    with pytest.raises(ImportError, match="vLLM"):  # "vllm" is selected (and says what to install)
        open_engine(model_path(), EvalConfig(engine="vllm"))


# --- data-parallel sharding, two ranks simulated with threads -----------------------------------------------

def _two_ranks(monkeypatch, run):
    """run(ctx) on two threads acting as ranks 0 and 1; the all-gather is simulated with a barrier."""
    world = 2
    barrier, slots, results, errors = threading.Barrier(world, timeout=60), [None] * world, [None] * world, []

    def fake_all_gather(obj, ctx):
        slots[ctx.rank] = obj
        barrier.wait()
        gathered = list(slots)
        barrier.wait()  # nobody overwrites a slot before everyone has read it
        return gathered

    monkeypatch.setattr(scoring, "_all_gather", fake_all_gather)

    def rank_main(rank):
        try:
            results[rank] = run(SimpleNamespace(rank=rank, world_size=world, is_main=rank == 0))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=rank_main, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    return results


def test_two_ranks_split_the_samples_and_gather_the_single_rank_result(monkeypatch):
    prompts = [f"p{i}" + "." * (i % 3) for i in range(7)]  # odd count: rank 0 gets 4, rank 1 gets 3
    script = {p: [p[::-1]] for p in prompts}
    samples = [sample("copying" if i % 2 else "note_taxonomy", p, p[::-1] if i % 3 else "x") for i, p in
               enumerate(prompts)]
    single = generate_answers(ScriptedEngine(script), samples)
    engines = [ScriptedEngine(script), ScriptedEngine(script)]
    results = _two_ranks(monkeypatch, lambda ctx: generate_answers(engines[ctx.rank], samples, ctx=ctx))
    assert results[0] == single and results[1] == single
    assert sorted(engines[0].prompts_seen()) == sorted(prompts[0::2])
    assert sorted(engines[1].prompts_seen()) == sorted(prompts[1::2])

    cfg = EvalConfig()
    single_scores = evaluate_samples(ScriptedEngine(script), samples, cfg)
    assert 0 < single_scores.sns < 100  # some right, some wrong: a mis-gathered order would change it
    scores = _two_ranks(monkeypatch, lambda ctx: evaluate_samples(ScriptedEngine(script), samples, cfg, ctx=ctx))
    assert scores[0] == single_scores and scores[1] == single_scores


def test_two_ranks_with_fewer_samples_than_ranks(monkeypatch):
    samples = [sample("copying", "only", "only")]
    engines = [ScriptedEngine({"only": ["only"]}), ScriptedEngine({"only": ["only"]})]
    results = _two_ranks(monkeypatch, lambda ctx: pass_rates(engines[ctx.rank], samples, k=2, ctx=ctx))
    assert results[0] == results[1] == ([1.0], [1.0])
    assert engines[1].calls == []  # rank 1 had nothing to generate
