"""The worked example in docs/examples runs as a user would run it, and its findings hold."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "previous_token_heads.py"


def test_previous_token_heads_example():
    out = subprocess.run([sys.executable, str(EXAMPLE), "--json"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    top = r["top_heads"]
    assert top[0]["score"] > 0.5 and top[0]["score"] > 2 * top[1]["score"]  # one clear previous-token head
    # zeroing the previous-token heads costs far more than zeroing as many random heads
    assert r["ppl_top3_ablated"] > 1.2 * max(r["ppl_random3_ablated"])
    assert min(r["ppl_random3_ablated"]) > r["ppl_base"]
    steer = [r["steering"][k] for k in ("0.0", "2.0", "4.0")]
    odds = [s["log_odds"] for s in steer]
    assert odds[0] < odds[1] < odds[2] and odds[2] - odds[0] > 5
    assert steer[2]["double"] > steer[2]["single"] and steer[0]["single"] > steer[0]["double"]
    assert np.isfinite(r["steer_norm"])
