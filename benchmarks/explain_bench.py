"""What an explanation costs the server: ``drex_model.reasons.explain`` on profiles of
the size the server keeps (64 words), a 20,000-review vocabulary and 16 quotes per item.

    .venv/bin/python benchmarks/explain_bench.py

Prints microseconds per explanation and milliseconds per top-10 (ten explanations, one
user). Generated words and ratings; the cost depends on profile sizes, not on the text.
"""

from __future__ import annotations

import argparse
import random
import time

from drex_model.reasons import PROFILE_WORDS, QUOTES_KEPT, Quote, Vocabulary, explain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reviews", type=int, default=20_000)
    parser.add_argument("--vocabulary", type=int, default=5_000)
    parser.add_argument("--users", type=int, default=200)
    args = parser.parse_args()
    rng = random.Random(0)
    words = [f"w{n}" for n in range(args.vocabulary)]
    vocabulary = Vocabulary()
    for _ in range(args.reviews):  # 20 distinct words per review, attention spread evenly
        vocabulary.add({w: 1 / 20 for w in rng.sample(words, 20)}, rng.choice([1, 3, 4, 5, 5]))

    def profile() -> dict[str, float]:
        return {w: rng.random() for w in rng.sample(words, PROFILE_WORDS)}

    users = [profile() for _ in range(args.users)]
    items = [profile() for _ in range(10)]
    quotes = [Quote(f"The {w} is fine.", 5.0, (w, "fine")) for w in rng.sample(words, QUOTES_KEPT)]
    explain(users[0], items[0], vocabulary, 4.2, quotes=quotes)  # the word lists load once
    start = time.perf_counter()
    for user in users:
        for item in items:
            explain(user, item, vocabulary, 4.2, quotes=quotes)
    per = (time.perf_counter() - start) / (len(users) * len(items))
    print(f"explain: {per * 1e6:.0f} us per explanation, {per * 10 * 1e3:.2f} ms per top-10")


if __name__ == "__main__":
    main()
