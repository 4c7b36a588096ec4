"""Score a JSONL file of texts with phi2cpu on Ray Data: an actor pool of phi2cpu engines.

    python examples/ray/score_jsonl.py prompts.jsonl scores.jsonl --actors 4 --threads 2

Each input line is a JSON object with a "text" field (--field), and with --context-field also a
context that the text continues (then only the text's tokens are scored, as lm-eval's
loglikelihood). Each output line is the input object, in the input's order, plus:
  logprob   the sum of log p(token | the tokens before it) over the scored tokens
  n_tokens  how many tokens were scored
  greedy    whether every scored token is the model's most likely one
  ppl       exp(-logprob / n_tokens)
and with --token-logprobs the per-token list, equal to Model.token_logprobs. The output file
appears whole or not at all. Runs on the cluster at $RAY_ADDRESS, else on one started here.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import ray

import phi2cpu.ray
from phi2cpu.atomic import replace_durably, temp_path
from phi2cpu.errors import Phi2Error


def read_rows(path: Path, field: str, context_field: str | None) -> list:
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:
                raise Phi2Error(f"{path}:{n}: not JSON: {e}") from None
            for key in (field, context_field):
                if key is not None and not (isinstance(row, dict) and isinstance(row.get(key), str)):
                    raise Phi2Error(f"{path}:{n}: needs a string field {key!r}")
            rows.append({"line": n, "row": json.dumps(row), "text": row[field],
                         "context": row[context_field] if context_field else ""})
    if not rows:
        raise Phi2Error(f"{path} holds no rows")
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("input", type=Path)
    p.add_argument("output", type=Path)
    p.add_argument("--model", default=None, help="a GGUF path or store name on every node (default: the demo model)")
    p.add_argument("--actors", type=int, default=1, help="phi2cpu engines scoring at once (default: 1)")
    p.add_argument("--threads", type=int, default=1, help="threads (and Ray CPUs) per engine (default: 1)")
    p.add_argument("--ctx", type=int, default=2048, help="context length: the longest row in tokens (default: 2048)")
    p.add_argument("--field", default="text", help="the field to score (default: text)")
    p.add_argument("--context-field", default=None, help="a field the scored text continues (default: none)")
    p.add_argument("--token-logprobs", action="store_true", help="also write each token's log-prob")
    a = p.parse_args(argv)
    try:
        rows = read_rows(a.input, a.field, a.context_field)
        if not ray.is_initialized():
            ray.init(logging_level="warning", log_to_driver=False)
        ds = ray.data.from_items(rows)
        scored = phi2cpu.ray.score(ds, a.model, threads=a.threads, actors=a.actors, n_ctx=a.ctx,
                                   context_column="context" if a.context_field else None)
        results = sorted(scored.take_all(), key=lambda r: r["line"])
        tmp = temp_path(a.output)
        try:
            with open(tmp, "w", encoding="utf-8") as out:
                for r in results:
                    row = json.loads(r["row"])
                    n = int(r["n_tokens"])
                    row.update(logprob=float(r["logprob"]), n_tokens=n, greedy=bool(r["greedy"]),
                               ppl=math.exp(-float(r["logprob"]) / n))
                    if a.token_logprobs:
                        row["token_logprobs"] = [float(x) for x in r["token_logprobs"]]
                    out.write(json.dumps(row) + "\n")
            replace_durably(tmp, a.output)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    except (Phi2Error, OSError) as e:
        print(f"score_jsonl: error: {e}", file=sys.stderr)
        return 1
    print(f"scored {len(results)} rows into {a.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
