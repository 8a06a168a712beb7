"""The model test's real server: Valkey under libfaketime, one per session (see clocks.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.model.clocks import TimeShiftedValkey


@pytest.fixture(scope="session")
def time_shifted_valkey(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TimeShiftedValkey]:
    server = TimeShiftedValkey(tmp_path_factory.mktemp("valkey-faketime"))
    yield server
    server.stop()
