"""DAPO pieces the RL stage is built from (docs/method.md; docs/design.md, "The loop"): the clipped
policy-gradient objective (loss.py), overlong reward shaping (shaping.py), rollout batches (batch.py), the
stage's settings (config.py) and its rollouts with dynamic sampling (source.py). The stage itself is
redone_fast.stages.rl."""
