"""The RL stage's tiny preset at the size the RL tests were written and measured at (the stage's own tiny
preset before issue 18 made the pipeline's tiny RL settings the one tiny preset): 16 prompts per rollout,
24-token answers, lr 2e-4. Kept so that those tests' figures and run times stay as they were."""
from __future__ import annotations

import dataclasses

from redone_fast.loop import LoopSettings
from redone_fast.rl.config import RLConfig, preset

SMALL = dict(rollout_steps=12, prompts_per_step=16, max_response_tokens=24, overlong_buffer=8,
             micro_batch_tokens=2048, generation_batch=16)
SMALL_LR = 2e-4
SMALL_CHECKPOINT_EVERY = 4

# The same on the command line of `python -m redone_fast.stages.rl`.
SMALL_FLAGS = [f"--{name.replace('_', '-')}={value}" for name, value in SMALL.items()] + [
    f"--optim.lr={SMALL_LR}", f"--loop.checkpoint-every={SMALL_CHECKPOINT_EVERY}"]


def small_rl_config(**overrides) -> RLConfig:
    base = preset("tiny")
    cfg = dataclasses.replace(base, **SMALL, optim=dataclasses.replace(base.optim, lr=SMALL_LR),
                              loop=LoopSettings(checkpoint_every=SMALL_CHECKPOINT_EVERY))
    return dataclasses.replace(cfg, **overrides)
