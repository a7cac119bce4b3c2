"""Fixtures for the reliability tests: the real DAG on the embedded default, and one shared run of the bad-input
corpus, fetched over HTTP behind credentials, that several test modules break and inspect.

Whole-DAG runs are the expensive part (~15-30 s each on a 2-core machine), so the corpus run is made once per
session and the DAG is parsed once. Runs use fasterrcnn_mobilenet_v3_large_320_fpn with random weights at
64-96 px: reliability does not depend on the detector, and it is the cheapest one on CPU.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.airflow_env import load_batch_dag
from tests.bad_inputs import CorpusCase, write_corpus
from tests.reliability import runs
from tests.reliability.http_files import HttpFiles, serve_files

# Deployment settings for the whole package: the local launcher, and retries that wait 1 s instead of 60.
SETTINGS_ENV = {"DETECTION_LAUNCHER": "local", "DETECTION_RETRY_DELAY_S": "1"}


@pytest.fixture(scope="session")
def batch_dag(airflow_db):
    """The batch DAG parsed under SETTINGS_ENV, which stays set while tasks run (they read settings too)."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in SETTINGS_ENV.items():
            patch.setenv(name, value)
        yield load_batch_dag()


@pytest.fixture
def own_dag(batch_dag):
    """The batch DAG parsed afresh, under batch_dag's settings, for a test whose conf must not reach others:
    in-process, dag.test() leaves a run's conf values in its tasks' params (Airflow 3.3), so a later run on
    the same DAG object whose conf omits a key still gets the earlier value."""
    return load_batch_dag()


# -- the shared corpus run -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CorpusRun:
    """The corpus run: what went in, what is expected per URI, and what the run left behind."""

    run: object  # the DagRun
    conf: dict
    cases: list[CorpusCase]
    expected: dict[str, tuple]  # image URI -> ("ok", (w, h)) or ("error", code)
    listed: int
    skipped_not_image: int
    log: str  # everything the tasks and the engine printed during the run
    http: HttpFiles

    @property
    def run_id(self) -> str:
        return self.run.run_id

    @property
    def prefix(self) -> str:
        return runs.run_prefix(self.conf, self.run_id)


@pytest.fixture(scope="session")
def corpus_run(batch_dag, tmp_path_factory, request) -> Iterator[CorpusRun]:
    """One whole-DAG run over every case of tests/bad_inputs.py, plus duplicates, a non-image and images over
    authenticated HTTP; the input manifest itself is fetched over HTTP with user:password@ and ?token=."""
    root = tmp_path_factory.mktemp("corpus-run")
    cases = write_corpus(root / "corpus")
    served = root / "served"
    served.mkdir()
    jpeg = next(case for case in cases if case.name == "jpeg")
    (served / "remote.jpg").write_bytes(jpeg.data())

    with serve_files(served) as http_files:
        expected = {case.uri: case.expected for case in cases}
        expected[http_files.url("remote.jpg")] = jpeg.expected
        expected[http_files.url("gone.jpg")] = ("error", "not_found")
        expected[http_files.url("remote.jpg", password="wrong")] = ("error", "permission_denied")
        entries = [
            *expected,
            f"file://{jpeg.uri}",  # the same image under another spelling: a duplicate
            jpeg.uri,  # the same URI twice: a duplicate
            f"  {cases[1].uri}  ",  # surrounding blanks: a duplicate
            str(root / "corpus" / "notes.txt"),  # named on purpose but not an image: skipped
        ]
        (served / "inputs.txt").write_text("\n".join(entries) + "\n")
        conf = runs.tiny_conf(root, http_files.url("inputs.txt"), shard_size=16)

        capture = request.config.pluginmanager.getplugin("capturemanager")
        with capture.global_and_fixture_disabled(), runs.captured_output(root / "run.log"):
            run = runs.run_dag(batch_dag, conf, runs.LOGICAL_DATE)
        yield CorpusRun(
            run=run,
            conf=conf,
            cases=cases,
            expected=expected,
            listed=len(entries) - 1,
            skipped_not_image=1,
            log=(root / "run.log").read_text(errors="replace"),
            http=http_files,
        )
