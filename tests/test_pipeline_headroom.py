"""The headroom diagnostic (redone_fast.pipeline.headroom) against a scripted engine whose answers are known,
and the eval CLI's --headroom flag on the bundled tiny model."""
import json
import math

import pytest

from redone_fast.pipeline.headroom import answer_entropy, headroom_table, measure_headroom
from test_pipeline_scoring import ScriptedEngine, sample

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_headroom_figures_follow_their_definitions():
    samples = [sample("hashtag_choice", "a?", "x"), sample("hashtag_choice", "b?", "y"),
               sample("arithmetic", "1+1", "2"), sample("entity_extraction", "e?", "a, b", "set_f1")]
    engine = ScriptedEngine({
        "a?": ["z", "x", "z", "z"],       # greedy z (wrong); 1 of 4 right; signal; answers z,x
        "b?": ["q", "q", "q", "q"],       # never right: pass@k 0, no signal, entropy 0
        "1+1": ["2", "2", "2", "2"],      # solved: right every time, no signal
        "e?": ["a, b", "a", "a", "a"],    # set F1 1, 0.667 x3: full credit once
    })
    table = measure_headroom(engine, samples, k=4)
    h = table["hashtag_choice"]
    assert (h.prompts, h.k, h.greedy, h.pass_at_1, h.pass_at_k, h.signal) == (2, 4, 0.0, 12.5, 50.0, 50.0)
    assert h.entropy == pytest.approx((-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)) + 0.0) / 2)
    a = table["arithmetic"]
    assert (a.greedy, a.pass_at_1, a.pass_at_k, a.signal, a.entropy) == (100.0, 100.0, 100.0, 0.0, 0.0)
    e = table["entity_extraction"]
    assert e.greedy == pytest.approx(100.0) and e.pass_at_1 == 25.0 and e.pass_at_k == 100.0 and e.signal == 100.0
    assert a.domain == "general" and h.domain == "sns"
    samplings = [s for _, s in engine.calls]
    assert [s.temperature for s in samplings] == [0.0, 1.0] and samplings[1].n == 4
    lines = headroom_table(table).splitlines()
    assert lines[0].startswith("| task |") and "pass@4" in lines[0] and len(lines) == 2 + 3
    assert lines[2].startswith("| entity_extraction | sns")  # SNS tasks first
    with pytest.raises(ValueError, match="k must be"):
        measure_headroom(engine, samples, k=1)


def test_answer_entropy_reads_the_normalised_answer():
    assert answer_entropy(["Answer: Food", "food", "  FOOD", "because...\nAnswer: food"]) == 0.0
    assert answer_entropy(["a", "b"]) == pytest.approx(math.log(2))


def test_eval_cli_prints_and_writes_the_headroom_table(tmp_path, capsys):
    from redone_fast.eval import main
    from redone_fast.tiny import model_path
    out = tmp_path / "scores.json"
    assert main(["--model", str(model_path()), "--max-samples-per-task", "3", "--headroom-k", "4",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "sampling headroom" in printed and "pass@4" in printed
    rows = json.loads(out.read_text())["headroom"]
    assert set(rows) == {"note_taxonomy", "hashtag_choice", "query_relevance", "entity_extraction",
                         "slang_translation", "arithmetic", "copying", "simple_qa"}
    for row in rows.values():
        assert row["prompts"] == 3 and 0 <= row["pass_at_1"] <= row["pass_at_k"] <= 100
