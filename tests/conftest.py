"""Fixtures shared by all tests: one embedded broker per session, unique topic names."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator

import pytest

from streams.broker import EmbeddedBroker


def pytest_configure(config: pytest.Config) -> None:
    # kafka-python 3.0.12 reads its protocol schemas at import time through
    # importlib.resources.read_text (which calls open_text), deprecated since Python 3.11.
    # It is their code, not ours; only these two messages from those two callers are muted.
    for line in (
        "ignore:read_text is deprecated:DeprecationWarning:kafka.protocol.schemas.load_json",
        "ignore:open_text is deprecated:DeprecationWarning:importlib.resources._legacy",
    ):
        config.addinivalue_line("filterwarnings", line)


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """A started Tansu broker shared by the whole session; stopped at the end."""
    with EmbeddedBroker(log_path=tmp_path_factory.mktemp("tansu") / "tansu.log") as started:
        yield started


@pytest.fixture
def topic_name(request: pytest.FixtureRequest) -> str:
    """A topic name no other test uses (the session broker keeps every topic)."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", request.node.name)[:60].strip("-")
    return f"{stem}-{uuid.uuid4().hex[:8]}"
