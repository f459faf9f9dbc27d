"""Interaction events as the learn agent receives them, for tests that drive
:class:`streams.agents.learn.LearnerSession` without a broker."""

from __future__ import annotations

import zlib
from pathlib import Path

from drex_model.evaluate.data import load_interactions
from drex_model.evaluate.sample import write_sample
from streams.events import InteractionEvent


def sample_events(path: Path, users: int, groups: int) -> list[InteractionEvent]:
    """The generated sample (written to ``path``) as interaction events, its users
    interleaved in ``groups`` as a live stream interleaves them (the file lists them one
    by one), each user's interactions in time order."""
    rows = load_interactions(write_sample(path, users=users)).interactions
    rows = sorted(rows, key=lambda r: (zlib.crc32(r.user.encode()) % groups, r.timestamp))
    return [
        InteractionEvent(
            user_id=r.user,
            item_id=r.item,
            rating=r.rating,
            text=r.text,
            event_time=r.timestamp,
            review_event_id=f"r{n}",
            rating_event_id=f"s{n}",
        )
        for n, r in enumerate(rows)
    ]
