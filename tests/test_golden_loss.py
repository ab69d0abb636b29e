"""Golden losses (docs/design.md, "Testing without a GPU"): the first SFT steps of the bundled tiny model
under a fixed seed give the losses stored in tests/golden/sft_tiny_losses.json. Any change to the data
order, packing, model loading, loss normalisation, optimizer or schedule moves them; a deliberate change
regenerates the file with REDONE_FAST_UPDATE_GOLDEN=1 and says why in its commit."""
import dataclasses
import json
import os
from pathlib import Path

import pytest

from redone_fast.loop import LoopSettings, read_metrics
from redone_fast.stages.sft import preset, run_sft

GOLDEN = Path(__file__).parent / "golden" / "sft_tiny_losses.json"
STEPS = 5


def test_tiny_sft_first_steps_match_the_golden_losses(dist_ctx, tmp_path):
    cfg = dataclasses.replace(preset("tiny"), max_steps=STEPS, eval_files=[], export=False,
                              loop=LoopSettings(checkpoint_every=0))
    run_sft(cfg, tmp_path)
    got = [row["loss"] for row in read_metrics(tmp_path) if "loss" in row]
    assert len(got) == STEPS
    if os.environ.get("REDONE_FAST_UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(json.dumps({"what": "SFT losses of steps 1-5: preset tiny, max_steps 5, one process",
                                      "losses": got}, indent=1) + "\n")
    expected = json.loads(GOLDEN.read_text())["losses"]
    # Float rounding differs across CPU vector widths (the C++ row kernels pick SSE2/AVX2/AVX-512): 2e-5.
    assert got == pytest.approx(expected, rel=2e-5)
