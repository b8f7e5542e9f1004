"""The comm relay fixture for kernel-side widget tests."""

from __future__ import annotations

from collections.abc import Iterator

import comm
import pytest

from .relay import CommRelay


@pytest.fixture
def relay(monkeypatch: pytest.MonkeyPatch) -> Iterator[CommRelay]:
    """Widgets created in the test open their comm on a relay the test drives."""
    relay = CommRelay()
    monkeypatch.setattr(comm, "create_comm", relay.create_comm)
    yield relay
