"""Training stages on the loop: SFT (stage 2's engine) and RL (stages 1 and 3); docs/method.md has the method."""
