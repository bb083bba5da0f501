"""lm-eval integration (the only package that imports lm_eval)."""
