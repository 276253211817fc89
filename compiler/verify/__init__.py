"""The verify stage: the compiled graphs against the fp32 reference, gated per precision."""
