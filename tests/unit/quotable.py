"""A small stream of rated reviews with quotable sentences, for tests of the
explanations' state (vocabulary, quotes, decaying user profiles) across restarts."""

from __future__ import annotations

import numpy as np

from drex_model.types import Interaction

REVIEWS = (
    "The warm tone fills the room. I love how the tuning pegs hold their pitch!",
    "Cheap strap broke after a week. The finish feels flimsy and rough.",
    "Solid metal build with a bright sound. Setup was easy for a beginner.",
    "Great value for the price. The pickup hums a little but it works fine.",
    "Terrible intonation on the upper frets. Returned it the next day.",
)


def reviewed(n: int, start: int = 0, seed: int = 0) -> list[Interaction]:
    """``n`` interactions of 6 users with 5 items; most carry a review and a rating that
    agrees with it (the negative reviews rated low), so the vocabulary learns sentiment."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(start, start + n):
        j = int(rng.integers(len(REVIEWS)))
        rating = float(rng.integers(1, 3) if j in (1, 4) else rng.integers(4, 6))
        out.append(
            Interaction(
                f"u{int(rng.integers(6))}",
                f"i{int(rng.integers(5))}",
                rating,
                REVIEWS[j] if k % 4 else None,
                float(k),
            )
        )
    return out
