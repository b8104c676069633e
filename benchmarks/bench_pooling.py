"""What pooled evidence costs every tick: decoding ``status.auditHistory``, pooling it and
encoding it back (``controller/tick.py`` does all three on each tick), and the bytes the
history adds to each status patch.

    python benchmarks/bench_pooling.py [--questions 600] [--audits 4]
"""

from __future__ import annotations

import argparse
import json
import random
import timeit
from datetime import UTC, datetime

from stopbudget.core import pooling
from stopbudget.core.curve import Answers, Point

LADDER = ((128, 0.30), (256, 0.50), (512, 0.60), (1024, 0.62))


def audit(questions: int, rnd: random.Random, *, held: bool) -> pooling.Run:
    points = []
    for budget, em in LADDER:
        correct = sum(1 << q for q in range(questions) if rnd.random() < em)
        everyone = (1 << questions) - 1
        hits = correct.bit_count()
        points.append(Point(budget, hits, questions, 300.0, 10, 1, (Answers(everyone, correct),)))
    return pooling.Run(datetime(2026, 1, 1, tzinfo=UTC), "m", questions, tuple(points), held)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=600)
    parser.add_argument("--audits", type=int, default=4, help="the last one is held out")
    args = parser.parse_args()
    rnd = random.Random(0)
    runs = [audit(args.questions, rnd, held=i == args.audits - 1) for i in range(args.audits)]
    stored = tuple(pooling.to_status(r) for r in runs)

    def per_tick() -> None:
        history = tuple(pooling.from_status(r) for r in stored)
        pooling.pooled(history, 0.95)
        tuple(pooling.to_status(r) for r in history)

    number = 2000
    seconds = timeit.timeit(per_tick, number=number) / number
    size = len(json.dumps([r.model_dump(mode="json", by_alias=True) for r in stored]))
    print(f"{args.audits} audits x {len(LADDER)} budgets x {args.questions} questions")
    print(f"pooling work per tick: {seconds * 1e6:.0f} us of CPU")
    print(f"auditHistory in every status patch: {size:,} bytes")


if __name__ == "__main__":
    main()
