"""The `detect` step of the embedded default: the pod's program, run as a local process.

`LocalShardOperator` takes the same per-shard kwargs as the pod (`shard_kwargs.detect_shard_kwargs`) and runs the same
entrypoint with the same arguments, so the embedded default exercises the production code path except for
where the process runs. The kwargs that only place a pod (image, name, namespace, container_resources,
node_selector, tolerations) are accepted and ignored by design: there is no container, scheduler or GPU node
to choose.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.providers.standard.hooks.subprocess import SubprocessHook
from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException

import detection_engine
from detection_pipeline.launch.shard_kwargs import IMAGE_ENV

if TYPE_CHECKING:
    from airflow.sdk import Context

ENGINE_MODULE = "detection_engine"
# Engine exit codes a retry cannot fix (bad arguments or manifest; model or weights unloadable).
PERMANENT_EXIT_CODES = frozenset({2, 3})
# The engine stopped cleanly on SIGTERM with its finished images committed: the retry resumes from them.
PREEMPTED_EXIT_CODE = 5
SUMMARY_FILE = "return.json"


def engine_failure(returncode: int, last_error: str | None) -> AirflowException:
    """What a non-zero engine exit fails the task with: no retry for 2 and 3; a retry for the rest, and for 5
    (preempted) one that resumes from the committed parts."""
    message = f"detection engine exited with code {returncode}: {last_error or '(no message)'}"
    if returncode in PERMANENT_EXIT_CODES:
        return AirflowFailException(message)
    if returncode == PREEMPTED_EXIT_CODE:
        return AirflowException(f"shard preempted, the retry resumes where it stopped: {message}")
    return AirflowException(message)


class LocalShardOperator(BaseOperator):
    """Run `python -m detection_engine <arguments>` for one shard and return its summary, as the pod would."""

    # The same as the pod operator's, so a value renders the same way under either launcher.
    template_fields = ("arguments", "env_vars")
    ui_color = "#e8f4e8"

    def __init__(
        self,
        *,
        arguments: list[str],
        env_vars: dict[str, str] | None = None,
        labels: dict[str, str] | None = None,
        image: str | None = None,
        name: str | None = None,
        namespace: str | None = None,
        container_resources: dict | None = None,
        node_selector: dict | None = None,
        tolerations: list | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.arguments = list(arguments)
        self.env_vars = dict(env_vars or {})
        self.labels = dict(labels or {})  # read by the map index template, as on the pod
        self._hook = SubprocessHook()  # streams the engine's output into the task log, as BashOperator does

    def execute(self, context: Context) -> dict:
        with tempfile.TemporaryDirectory(prefix="detect-") as tmp:
            summary_path = Path(tmp) / SUMMARY_FILE
            command = [sys.executable, "-m", ENGINE_MODULE, *self.arguments, f"--summary-path={summary_path}"]
            try:
                result = self._hook.run_command(command, env=self._environment(), cwd=tmp)
            finally:  # interrupted (timeout, kill): never leave an engine running unowned
                self._stop_engine()
            if result.exit_code != 0:
                raise engine_failure(result.exit_code, result.output or None)
            if not summary_path.exists():
                raise AirflowException(f"detection engine exited 0 but wrote no summary at {summary_path}")
            return json.loads(summary_path.read_text())

    def on_kill(self) -> None:
        self._stop_engine()

    def _stop_engine(self) -> None:
        """SIGTERM to the engine's process group (it commits its finished images and exits 5), then reap it."""
        process = self._hook.sub_process
        if process is not None and process.poll() is None:
            self._hook.send_sigterm()
            process.wait()

    def _environment(self) -> dict[str, str]:
        """The worker's environment plus the shard's, with the engine this process imports first on the path.

        The DAG validated its config against that engine (catalog, schema, layout), so the subprocess runs the
        same code whether or not the package is installed. No container image ran the shard, so none is
        recorded: the image named in the config is not what produced these results.
        """
        engine_root = str(Path(detection_engine.__file__).resolve().parent.parent)
        python_path = os.pathsep.join(p for p in (engine_root, os.environ.get("PYTHONPATH")) if p)
        env = {**os.environ, **self.env_vars, "PYTHONPATH": python_path}
        env.pop(IMAGE_ENV, None)
        return env
