"""Writes examples/arithmetic_qa.jsonl: 12,000 distinct "What is a+b?" / "What is a-b?" problems
(a, b in 0..99, seed 0) with their answers, standing in for a user's own JSONL of problems.

    python examples/make_arithmetic_qa.py

12,000 of the 20,000 possible prompts: with the 3,000 this file first held, the built-in tiny model's
warm start (650 SFT steps) reached only 14.5% held-out greedy accuracy and GRPO had too little signal to
learn from (250 steps, flat at ~12% training accuracy); the built-in arithmetic task draws from all of them.
"""

import json
import random
from pathlib import Path


def main(n: int = 12_000, seed: int = 0) -> None:
    space = [(a, op, b) for a in range(100) for b in range(100) for op in "+-"]
    rng = random.Random(seed)
    rows = rng.sample(space, n)
    out = Path(__file__).with_name("arithmetic_qa.jsonl")
    with out.open("w") as f:
        for a, op, b in rows:
            answer = a + b if op == "+" else a - b
            f.write(json.dumps({"prompt": f"What is {a}{op}{b}?", "answer": str(answer)}) + "\n")


if __name__ == "__main__":
    main()
