"""Named model sizes.

The paper gives only the parameter counts (400M, 1.5B, 3.2B; docs/paper.md section 3): every dimension
below is OUR choice, picked so that the non-embedding parameter count (no token embedding, no LM
head) of the default LLaMA-style block lands within 5% of the name. `periln sizes` prints the table.
Head dimension 64 (400m) / 128 (1.5b, 3.2b), d_ff ~ 8/3 d rounded to a multiple of 64.
"""

from __future__ import annotations

from typing import Any

# Each entry: the ModelConfig fields a size fixes. Vocabulary and sequence length come from the run
# (tokenizer, data), so they are not part of a size.
SIZES: dict[str, dict[str, Any]] = {
    # tiny sizes for tests and the CPU demo
    "tiny": dict(d_model=64, n_layers=4, n_heads=4, d_ff=176),
    "tiny-deep": dict(d_model=64, n_layers=12, n_heads=4, d_ff=176),
    "small": dict(d_model=128, n_layers=8, n_heads=4, d_ff=352),
    # ~50M, 16 layers: deep enough for depth effects, small enough for one GPU in minutes
    "mini": dict(d_model=512, n_layers=16, n_heads=8, d_ff=1376),
    # the paper's sizes (dimensions are ours)
    "400m": dict(d_model=1024, n_layers=32, n_heads=16, d_ff=2752),
    "1.5b": dict(d_model=2048, n_layers=30, n_heads=16, d_ff=5504),
    "3.2b": dict(d_model=2560, n_layers=40, n_heads=20, d_ff=6848),
}

# The nominal parameter count a size is named after (None: not a paper size).
NOMINAL: dict[str, float | None] = {
    "tiny": None, "tiny-deep": None, "small": None, "mini": 50e6,
    "400m": 400e6, "1.5b": 1.5e9, "3.2b": 3.2e9,
}
