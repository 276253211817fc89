"""The precision stage: fp32 halves to fp16 or int8 graphs, calibration sets, and the int8 fallback that keeps harmful layers float."""
