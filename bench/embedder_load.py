"""How long a fresh process takes to load the default embedder and embed one query: PlainBert against
sentence-transformers, side by side (alternating, each in a new interpreter, as a CLI run pays it).

Every `agentstack run`, `search` and `eval` that embeds pays this before its first search. Prints each
round, then one JSON line: `st_over_plain` (> 1: PlainBert starts faster), both medians, and the largest
difference between the two query vectors (they compute the same model).

    python bench/embedder_load.py [--quick | --smoke]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

LOAD = """
import json, time
started = time.perf_counter()
from pathlib import Path
from agentstack.rag._embeddings import DEFAULT_EMBEDDING_MODEL, _model_path
root = Path(_model_path(DEFAULT_EMBEDDING_MODEL))
if {plain}:
    from agentstack.rag._bert import PlainBert
    vector = PlainBert(root).encode(["How does a thread survive a crash?"])[0]
else:
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging
    logging.disable_progress_bar()
    model = SentenceTransformer(str(root))
    vector = model.encode(["How does a thread survive a crash?"], normalize_embeddings=True)[0].tolist()
print(json.dumps({{"seconds": time.perf_counter() - started, "vector": vector}}))
"""


def load(plain: bool) -> tuple[float, list[float]]:
    done = subprocess.run(
        [sys.executable, "-c", LOAD.format(plain=plain)], capture_output=True, text=True, check=True, timeout=300
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return float(result["seconds"]), list(result["vector"])


def main(rounds: int) -> dict[str, float | int]:
    seconds: dict[bool, list[float]] = {True: [], False: []}
    difference = 0.0
    for n in range(rounds):
        timed = {}
        for plain in (True, False) if n % 2 == 0 else (False, True):
            spent, vector = load(plain)
            seconds[plain].append(spent)
            timed[plain] = vector
        difference = max(difference, max(abs(a - b) for a, b in zip(timed[True], timed[False], strict=True)))
        print(f"round {n + 1}: PlainBert {seconds[True][-1]:.2f} s, sentence-transformers {seconds[False][-1]:.2f} s")
    plain_s, st_s = statistics.median(seconds[True]), statistics.median(seconds[False])
    return {
        "st_over_plain": round(st_s / plain_s, 3),
        "plain_load_s": round(plain_s, 2),
        "st_load_s": round(st_s, 2),
        "max_abs_diff": float(f"{difference:.2e}"),
        "rounds": rounds,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="3 rounds")
    size.add_argument("--smoke", action="store_true", help="1 round (the test suite's run)")
    args = parser.parse_args()
    print(json.dumps(main(1 if args.smoke else 3 if args.quick else 7)))
