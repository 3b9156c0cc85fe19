"""Write the shipped AIME 2024 sample, `aime_2024_problems.parquet`, in the public file's layout.

    python tools/make_aime_sample.py [--out src/logitsdump/demo/assets/datasets/aime2024]

The problems are our own (AIME-style, integer answers 0-999), not AIME's. Columns as in the
public file modeltest reads: `ID`, `Problem`, `Solution`, `Answer` (int64). Needs pyarrow.
"""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "src/logitsdump/demo/assets/datasets/aime2024"
FILE_NAME = "aime_2024_problems.parquet"

#: (problem, solution, answer)
PROBLEMS = (
    ("Find the number of positive integers $n \\le 1000$ that are divisible by $7$ and whose digits sum to $7$.",
     "They are 7, 70, 133, 322, 511 and 700.", 6),
    ("Let $S$ be the sum of all positive divisors of $2024$. Find the remainder when $S$ is divided by $1000$.",
     "$2024 = 2^3 \\cdot 11 \\cdot 23$, so $S = 15 \\cdot 12 \\cdot 24 = 4320$.", 320),
    ("How many ordered pairs $(a, b)$ of positive integers satisfy $a + b = 90$ and $\\gcd(a, b) = 1$?",
     "$\\gcd(a, 90 - a) = \\gcd(a, 90)$, so the count is $\\varphi(90) = 24$.", 24),
    ("Find the least positive integer $n$ for which $n^2 + n + 41$ is not a prime number.",
     "For $n = 40$ the value is $41^2$; for smaller $n$ it is prime.", 40),
    ("A rectangle has integer side lengths and area $360$. How many such rectangles are there, if an "
     "$a \\times b$ and a $b \\times a$ rectangle count as the same?",
     "$360$ has $24$ divisors, which pair up into $12$ rectangles.", 12),
    ("Find the remainder when $3^{2024}$ is divided by $1000$.",
     "The order of $3$ modulo $1000$ divides $100$; $3^{2024} \\equiv 3^{24} \\equiv 481$.", 481),
    ("How many non-empty subsets of $\\{1, 2, \\ldots, 10\\}$ have elements that sum to $10$?",
     "These are the partitions of $10$ into distinct parts: there are $10$.", 10),
    ("Triangle $ABC$ has side lengths $13$, $14$ and $15$. Find its area.",
     "Heron's formula: $\\sqrt{21 \\cdot 8 \\cdot 7 \\cdot 6} = 84$.", 84),
)


def write(out: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({
        "ID": [f"sample-{i}" for i in range(1, len(PROBLEMS) + 1)],
        "Problem": [p for p, _, _ in PROBLEMS],
        "Solution": [s for _, s, _ in PROBLEMS],
        "Answer": pa.array([a for _, _, a in PROBLEMS], type=pa.int64()),
    })  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    path = out / FILE_NAME
    pq.write_table(table, path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    print(write(parser.parse_args().out))


if __name__ == "__main__":
    main()
