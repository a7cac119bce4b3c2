"""Every case of the bad-input corpus (tests/bad_inputs.py) through the whole DAG, in one run.

The input manifest and three of the images come over authenticated HTTP (conftest.py's `corpus_run`); the rest
are local files of every kind a bucket holds. Each input must end as exactly one row: ok with its real size, or
an error row with its reason code, and the run's counts must add up to the rows.
"""

from __future__ import annotations

from collections import Counter

import duckdb
import pytest

from tests.reliability import runs
from tests.reliability.exactly_once import assert_exactly_once

pytestmark = pytest.mark.slow

SHARDS = 2  # the corpus run's shard_size puts its inputs into two shards


def results(corpus_run) -> dict[str, tuple]:
    """image URI -> (status, error, width, height) of the corpus run's rows."""
    with duckdb.connect(corpus_run.conf["warehouse"].removeprefix("duckdb://"), read_only=True) as con:
        rows = con.execute(
            "SELECT image_uri, status, error, width, height FROM results WHERE run_id = ?",
            [corpus_run.run_id],
        ).fetchall()
    return {uri: rest for uri, *rest in rows}


def run_record(corpus_run) -> dict:
    with duckdb.connect(corpus_run.conf["warehouse"].removeprefix("duckdb://"), read_only=True) as con:
        cursor = con.execute("SELECT * FROM runs WHERE run_id = ?", [corpus_run.run_id])
        names = [column[0] for column in cursor.description]
        return dict(zip(names, cursor.fetchone(), strict=True))


def test_the_run_succeeds_and_each_unique_input_has_exactly_one_row(corpus_run, batch_dag):
    assert runs.state(corpus_run.run) == "success"
    states = runs.task_instances(batch_dag.dag_id, corpus_run.run_id)
    assert states[("verify", -1)] == ("success", 1), "the DAG's own exactly-once check passed first time"
    assert_exactly_once(
        corpus_run.conf["warehouse"],
        corpus_run.run_id,
        unique=len(corpus_run.expected),
        shards=SHARDS,
        prefix=corpus_run.prefix,
    )
    assert set(results(corpus_run)) == set(corpus_run.expected), "the rows are the unique inputs, no others"


def test_every_input_is_processed_correctly_or_is_an_error_row_with_its_reason(corpus_run):
    rows = results(corpus_run)
    wrong = {}
    for uri, (outcome, detail) in corpus_run.expected.items():
        status, error, width, height = rows[uri]
        if outcome == "ok":
            got = (status, error, (width, height))
            if got != ("ok", None, detail):
                wrong[uri] = (f"expected ok {detail}", got)
        elif status != "error" or not (error or "").startswith(f"{detail}: "):
            wrong[uri] = (f"expected error {detail}", (status, error))
    assert wrong == {}
    outcomes = Counter(outcome for outcome, _ in corpus_run.expected.values())
    assert outcomes["ok"] >= 15 and outcomes["error"] >= 12, "the corpus really holds both kinds"


def test_the_run_record_counts_add_up_to_the_rows(corpus_run):
    record = run_record(corpus_run)
    rows = results(corpus_run)
    unique = len(corpus_run.expected)
    ok = sum(status == "ok" for status, *_ in rows.values())

    assert record["listed"] == corpus_run.listed
    assert record["skipped_not_image"] == corpus_run.skipped_not_image
    assert record["duplicates"] == corpus_run.listed - unique == 3
    assert record["skipped_incremental"] == 0
    assert (record["processed"], record["ok"], record["failed"]) == (unique, ok, unique - ok)
    assert ok == sum(outcome == "ok" for outcome, _ in corpus_run.expected.values())
    assert record["shards"] == SHARDS
