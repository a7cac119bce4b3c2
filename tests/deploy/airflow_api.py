"""Airflow's REST API (api/v2) as the deployment test uses it: a token from /auth/token, bounded waits."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import requests

FINISHED = ("success", "failed")
POLL_S = 2
REQUEST_TIMEOUT_S = 30


class AirflowApi:
    def __init__(
        self, base_url: str, *, on_poll: Callable[[], None] = lambda: None, diagnostics=lambda: ""
    ) -> None:
        """`on_poll` runs on every poll of a wait (e.g. to fail at once when a service died); `diagnostics`
        gives what a failed wait should show (service logs)."""
        self.base_url = base_url
        self._on_poll = on_poll
        self._diagnostics = diagnostics
        # SimpleAuthManager with all admins hands out a token without credentials (GET; POST takes a login).
        token = requests.get(f"{base_url}/auth/token", timeout=REQUEST_TIMEOUT_S)
        token.raise_for_status()
        self._session = requests.Session()
        self._session.headers["Authorization"] = f"Bearer {token.json()['access_token']}"

    def request(self, method: str, path: str, **kwargs) -> requests.Response:
        return self._session.request(
            method, f"{self.base_url}/api/v2{path}", timeout=REQUEST_TIMEOUT_S, **kwargs
        )

    def ok(self, method: str, path: str, **kwargs) -> dict:
        response = self.request(method, path, **kwargs)
        assert response.status_code < 300, f"{method} {path}: {response.status_code} {response.text}"
        return response.json()

    # -- DAGs and runs -------------------------------------------------------------------------------

    def unpause(self, dag_id: str) -> None:
        assert self.ok("PATCH", f"/dags/{dag_id}", json={"is_paused": False})["is_paused"] is False

    def trigger(self, dag_id: str, conf: dict, *, logical_date: str | None = None) -> requests.Response:
        return self.request(
            "POST", f"/dags/{dag_id}/dagRuns", json={"logical_date": logical_date, "conf": conf}
        )

    def runs(self, dag_id: str) -> list[dict]:
        return self.ok("GET", f"/dags/{dag_id}/dagRuns", params={"limit": 100})["dag_runs"]

    def run(self, dag_id: str, run_id: str) -> dict:
        return self.ok("GET", f"/dags/{dag_id}/dagRuns/{run_id}")

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        return self.ok("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 1000})[
            "task_instances"
        ]

    def states(self, dag_id: str, run_id: str) -> dict[tuple[str, int], str | None]:
        """(task_id, map_index) -> state of every task instance of the run."""
        return {(ti["task_id"], ti["map_index"]): ti["state"] for ti in self.task_instances(dag_id, run_id)}

    # -- waiting -------------------------------------------------------------------------------------

    def wait_for(self, what: str, probe: Callable[[], object], timeout_s: float) -> object:
        """Poll `probe` until it returns something truthy; AssertionError with the last value after timeout_s."""
        deadline = time.monotonic() + timeout_s
        last = None
        while time.monotonic() < deadline:
            self._on_poll()
            last = probe()
            if last:
                return last
            time.sleep(POLL_S)
        raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}\n{self._diagnostics()}")

    def wait_finished(self, dag_id: str, run_ids: Iterable[str], timeout_s: float) -> dict[str, dict]:
        """Every run in a finished state (success or failed); the runs by id."""
        run_ids = list(run_ids)

        def finished():
            runs = {run_id: self.run(dag_id, run_id) for run_id in run_ids}
            return runs if all(run["state"] in FINISHED for run in runs.values()) else None

        try:
            return self.wait_for(f"{dag_id} runs {run_ids}", finished, timeout_s)
        except AssertionError as err:
            states = {run_id: self.states(dag_id, run_id) for run_id in run_ids}
            raise AssertionError(f"{err}\ntask states: {states}") from None
