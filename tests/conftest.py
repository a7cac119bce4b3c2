"""Fixtures shared by every test directory. Keep this file to fixtures many suites need."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.gcs_emulator import GcsEmulator


@pytest.fixture(scope="session")
def gcs_emulator() -> Iterator[GcsEmulator]:
    """One gcp-storage-emulator for the session, with this process's environment pointing gcsfs at it.

    Engine subprocesses inherit the environment, so they reach it too. Tests isolate themselves with
    `gcs_bucket` (a fresh bucket each), not by wiping the emulator under other tests' feet.
    """
    with GcsEmulator.start() as emulator, pytest.MonkeyPatch.context() as patch:
        for name, value in emulator.env().items():
            patch.setenv(name, value)
        yield emulator


@pytest.fixture
def gcs_bucket(gcs_emulator: GcsEmulator) -> str:
    """A new empty bucket on the emulator, as "gs://name"."""
    return gcs_emulator.create_bucket()
