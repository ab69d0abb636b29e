"""DAPO pieces the RL stage is built from (DESIGN sections 1 and 4): the clipped policy-gradient objective,
overlong reward shaping, rollout batches and dynamic sampling. The stage itself is redone_fast.stages.rl."""
