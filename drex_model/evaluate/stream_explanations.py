"""DReX in prequential replay, with its explanations scored as the stream goes.

Before each micro-batch is learned, each of its interactions with review text is
explained by :meth:`DReXLearner.explain` (the server's rule) from the state before the
micro-batch, the state its rating is predicted from; the explanation is kept with the
review and scored once the stream is over, with ``drex evaluate``'s ``expl_`` metrics
(:mod:`drex_model.evaluate.explanations`). The idf that weights ``expl_idf_precision``
is taken over all the stream's reviews: it is the yardstick, not something the learner
sees. A user or item met for the first time has no profile yet: its explanation may be
empty, which ``expl_coverage`` counts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from drex_model.evaluate.explanations import (
    EXPLANATION_COLUMNS,
    explain_pairs,
    explained_pairs,
    idf_weights,
    score_reasons,
    unseen_idf,
)
from drex_model.reasons import Reason
from drex_model.text import preprocess
from drex_model.types import Interaction

if TYPE_CHECKING:
    from drex_model.learner import DReXLearner


class DReXStream:
    """A :class:`DReXLearner` fed micro-batches, as the worker feeds it; each reviewed
    interaction is explained from the state before its micro-batch (see the module doc)."""

    predicts_ratings = True

    def __init__(self, learner: DReXLearner) -> None:
        self.learner = learner
        self.reviewed: list[Interaction] = []
        self.reasons: list[Reason] = []

    def learn(self, batch: Sequence[Interaction]) -> np.ndarray:
        pairs = explained_pairs(batch)
        if pairs and self.learner.config.use_text:
            self.reasons += explain_pairs(self.learner.explain, [(x.user, x.item) for x in pairs])
            self.reviewed += pairs
        return self.learner.learn_many(batch)

    def scores(self, users: Sequence[str], items: Sequence[str]) -> np.ndarray:
        return self.learner.ranking_scores(users, items)

    def metrics(self) -> dict[str, float]:
        """The ``expl_`` metrics of the explanations so far ({} with none)."""
        if not self.reviewed:
            return {}
        documents = [set(preprocess(x.text or "")) for x in self.reviewed]
        idf = idf_weights(documents)
        return score_reasons(self.reasons, self.reviewed, idf, unseen_idf(len(documents)))


def explanation_lines(models: Mapping[str, Mapping[str, float]]) -> list[str]:
    """The markdown table of the ``expl_`` metrics of the models that have them."""
    rows = {name: m for name, m in models.items() if "expl_coverage" in m}
    if not rows:
        return []
    lines = [
        "Explanations of each interaction with review text, from the state before its "
        "micro-batch, against that review (see docs/evaluation.md):",
        "",
        "| model | " + " | ".join(EXPLANATION_COLUMNS) + " |",
        "|---|" + "---|" * len(EXPLANATION_COLUMNS),
    ]
    for name, m in rows.items():
        cells = [
            f"{m[c]:.4f} ± {m.get(c + '_std', 0.0):.4f}" if c in m else "—"
            for c in EXPLANATION_COLUMNS
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return [*lines, ""]
