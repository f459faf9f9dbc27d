"""A generated review dataset, so that drex runs on a fresh machine with no data.

Users have tastes over product aspects, items have qualities on them; a rating follows
how well an item's qualities meet a user's tastes. The review says, in short sentences,
how two aspects were ("The tone is warm."), with words that match the rating's
sentiment. As in real reviews, what is talked about depends on both sides: the aspects
the user cares about and those where the item stands out (its strongest and weakest
qualities), each named by the item's own nouns (one item's reviews speak of its
"strap", another's of its "grip"). It is small and deterministic (by seed), and it has
the structure that review-based models exploit.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import orjson

# Per aspect: the nouns a review names it by, and the adjectives of a good and a bad
# experience of it.
ASPECTS = {
    "sound": ["tone", "sound", "volume", "bass", "treble", "pickup"],
    "build": ["build", "body", "metal", "finish", "case", "knob"],
    "price": ["price", "value", "deal", "cost", "budget", "money"],
    "comfort": ["strap", "weight", "grip", "fit", "cushion", "handle"],
    "setup": ["setup", "manual", "tuning", "install", "cable", "adjustment"],
}
GOOD = {
    "sound": ["warm", "bright", "clear", "rich"],
    "build": ["sturdy", "solid", "durable"],
    "price": ["fair", "reasonable", "unbeatable"],
    "comfort": ["comfortable", "soft", "light"],
    "setup": ["easy", "quick", "simple"],
}
BAD = {
    "sound": ["muddy", "thin", "harsh", "buzzy"],
    "build": ["flimsy", "cheap", "loose"],
    "price": ["overpriced", "steep", "high"],
    "comfort": ["heavy", "stiff", "awkward"],
    "setup": ["confusing", "tricky", "fiddly"],
}
POSITIVE = ["great", "love", "excellent", "perfect", "recommend", "happy"]
NEGATIVE = ["bad", "broke", "disappointed", "return", "poor", "waste"]
PHRASES = {  # no nouns, so that the aspects are what tells items apart
    "great": "Great!",
    "love": "I love it.",
    "excellent": "Excellent.",
    "perfect": "Just perfect.",
    "recommend": "Recommended.",
    "happy": "Very happy with it.",
    "bad": "Really bad.",
    "broke": "It broke quickly.",
    "disappointed": "I am disappointed.",
    "return": "I will return it.",
    "poor": "Poor.",
    "waste": "What a waste.",
}


def generate(
    users: int = 300, items: int = 120, per_user: int = 12, seed: int = 0
) -> list[dict[str, object]]:
    """Rows in the generic JSONL format (user, item, rating, text, timestamp)."""
    rng = np.random.default_rng(seed)
    wording = np.random.default_rng(seed + 1)  # the text's own draws: ratings stay as they are
    kinds = np.random.default_rng(seed + 2)  # what each item's reviews call its aspects
    names = list(ASPECTS)
    taste = rng.dirichlet(np.ones(len(names)) * 0.5, size=users)  # (users, aspects)
    quality = rng.normal(0.0, 1.0, size=(items, len(names)))  # (items, aspects)
    popularity = rng.zipf(1.6, size=items).astype(float)
    popularity /= popularity.sum()
    standout = np.exp(1.5 * np.abs(quality))  # an item is talked about where it stands out
    nouns = kinds.dirichlet(np.full(len(ASPECTS["sound"]), 0.3), size=(items, len(names)))
    rows: list[dict[str, object]] = []
    t = 1_500_000_000
    for u in range(users):
        chosen = rng.choice(items, size=min(per_user, items), replace=False, p=popularity)
        for i in chosen:
            fit = float(taste[u] @ quality[i])
            rating = int(np.clip(np.round(4.0 + 1.2 * fit + rng.normal(0, 0.5)), 1, 5))
            focus = rng.choice(len(names), size=2, replace=False, p=taste[u])
            # The draws of the original word-list generator, kept so that ratings and
            # timestamps stay as they were: 2 nouns per aspect, 2 mood words, a shuffle.
            # Of the nouns only their places are used now (where each sentence goes);
            # what the sentences talk about is drawn below, from the text's own draws.
            tokens: list[tuple[int, str]] = [
                (n, str(w)) for n, a in enumerate(focus) for w in rng.choice(ASPECTS[names[a]], 2)
            ]
            mood = POSITIVE if rating >= 4 else NEGATIVE
            tokens += [(2 + n, str(w)) for n, w in enumerate(rng.choice(mood, 2))]
            rng.shuffle(tokens)
            talk = taste[u] * standout[i]
            topics = wording.choice(len(names), size=2, replace=False, p=talk / talk.sum())
            sentences: dict[int, str] = {}
            for group, word in tokens:  # each sentence where its first word fell
                if group in sentences:
                    continue
                if group >= 2:
                    sentences[group] = PHRASES[word]
                    continue
                aspect = names[topics[group]]
                noun = wording.choice(ASPECTS[aspect], p=nouns[i, topics[group]])
                good = rating >= 4 or (rating == 3 and wording.random() < 0.5)
                adjective = wording.choice((GOOD if good else BAD)[aspect])
                sentences[group] = f"The {noun} is {adjective}."
            t += int(rng.integers(60, 86_400))
            rows.append(
                {
                    "user": f"u{u:04d}",
                    "item": f"i{i:04d}",
                    "rating": float(rating),
                    "text": " ".join(sentences.values()),
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
