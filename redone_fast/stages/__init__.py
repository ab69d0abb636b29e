"""Training stages on the loop: SFT (stage 2's engine); the RL stage follows (DESIGN section 1)."""
