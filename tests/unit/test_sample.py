"""The generated sample: its reviews say something about the item they review."""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict

from drex_model.evaluate.sample import ASPECTS, generate


def test_an_items_reviews_name_its_aspects_with_its_own_nouns() -> None:
    # In real reviews a strap's reviews speak of its strap: the item's most used noun is
    # several times more frequent in its reviews than in the corpus. (When the nouns
    # followed the reviewer alone, that lift was under 2: items read alike.)
    nouns = {noun for names in ASPECTS.values() for noun in names}
    per_item: dict[str, Counter[str]] = defaultdict(Counter)
    corpus: Counter[str] = Counter()
    for row in generate():
        words = [w.strip(".!").lower() for w in str(row["text"]).split()]
        said = [w for w in words if w in nouns]
        per_item[str(row["item"])].update(said)
        corpus.update(said)
    total = sum(corpus.values())
    lifts = []
    for counts in per_item.values():
        n = sum(counts.values())
        if n >= 40:
            noun, k = counts.most_common(1)[0]
            lifts.append((k / n) / (corpus[noun] / total))
    assert len(lifts) >= 20
    assert statistics.median(lifts) >= 3.0
