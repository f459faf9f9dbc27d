"""The one record every part of drex passes around: a (user, item) interaction."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Interaction:
    """One user-item interaction with whichever modalities arrived.

    A missing modality is ``None``; the model fuses it as zeros (paper, section 3.3).
    """

    user: str  # external user id
    item: str  # external item id
    rating: float | None  # star rating on the 1..S scale, None when only a review came
    text: str | None  # review text, None when only a rating came
    timestamp: float = 0.0  # event time, seconds since the epoch; orders the stream
