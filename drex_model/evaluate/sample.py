"""A generated review dataset, so that drex runs on a fresh machine with no data.

Users have tastes over product aspects, items have qualities on them; a rating follows
how well an item's qualities meet a user's tastes, and the review names the aspects the
user cares about with words that match the rating's sentiment. It is small and
deterministic (by seed), and it has the structure that review-based models exploit.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import orjson

ASPECTS = {
    "sound": ["tone", "sound", "warm", "bright", "noise", "hum"],
    "build": ["sturdy", "metal", "plastic", "solid", "flimsy", "build"],
    "price": ["price", "cheap", "value", "expensive", "budget", "deal"],
    "comfort": ["comfortable", "strap", "weight", "grip", "soft", "fit"],
    "setup": ["tune", "setup", "easy", "manual", "install", "adjust"],
}
POSITIVE = ["great", "love", "excellent", "perfect", "recommend", "happy"]
NEGATIVE = ["bad", "broke", "disappointed", "return", "poor", "waste"]


def generate(
    users: int = 300, items: int = 120, per_user: int = 12, seed: int = 0
) -> list[dict[str, object]]:
    """Rows in the generic JSONL format (user, item, rating, text, timestamp)."""
    rng = np.random.default_rng(seed)
    names = list(ASPECTS)
    taste = rng.dirichlet(np.ones(len(names)) * 0.5, size=users)  # (users, aspects)
    quality = rng.normal(0.0, 1.0, size=(items, len(names)))  # (items, aspects)
    popularity = rng.zipf(1.6, size=items).astype(float)
    popularity /= popularity.sum()
    rows: list[dict[str, object]] = []
    t = 1_500_000_000
    for u in range(users):
        chosen = rng.choice(items, size=min(per_user, items), replace=False, p=popularity)
        for i in chosen:
            fit = float(taste[u] @ quality[i])
            rating = int(np.clip(np.round(4.0 + 1.2 * fit + rng.normal(0, 0.5)), 1, 5))
            focus = rng.choice(len(names), size=2, replace=False, p=taste[u])
            words = [str(w) for a in focus for w in rng.choice(ASPECTS[names[a]], 2)]
            mood = POSITIVE if rating >= 4 else NEGATIVE
            words += [str(w) for w in rng.choice(mood, 2)]
            rng.shuffle(words)
            t += int(rng.integers(60, 86_400))
            rows.append(
                {
                    "user": f"u{u:04d}",
                    "item": f"i{i:04d}",
                    "rating": float(rating),
                    "text": "The " + " and ".join(words) + ".",
                    "timestamp": t,
                }
            )
    rows.sort(key=lambda r: r["timestamp"])  # type: ignore[arg-type, return-value]
    return rows


def write_sample(path: str | os.PathLike[str], **kwargs: int) -> Path:
    """Write :func:`generate`'s rows as JSON lines; returns the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("wb") as f:
        for row in generate(**kwargs):
            f.write(orjson.dumps(row) + b"\n")
    return out
