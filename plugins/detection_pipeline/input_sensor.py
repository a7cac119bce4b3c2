"""Wait for a run's input to land, so a schedule can run ahead of the data it reads.

A daily run for `gs://images/{ds}/` may start before that day's folder exists. The `wait_for_input` sensor
sits between `validate_config` and `build_manifest`: in reschedule mode it looks every
DETECTION_INPUT_POKE_INTERVAL_S (no worker slot held in between) and fails after DETECTION_INPUT_TIMEOUT_S,
without a retry (Airflow never retries a sensor timeout). Only scheduled runs wait: a manual, backfill or
sweep run names an input that should already be there, so a missing one fails it at once, like any
input that can never work as given (a prefix that is a file, a manifest file that is a folder).
An input that is there passes on the first look, so such runs go straight through.

"Landed" means the prefix exists (on GCS: at least one object under it) or the manifest file exists; an
empty local folder counts, and makes an empty run.
"""

from __future__ import annotations

import logging

from airflow.sdk import task

from detection_engine import storage
from detection_pipeline import uris
from detection_pipeline.errors import ManifestError, at_the_boundary
from detection_pipeline.settings import Settings

log = logging.getLogger(__name__)

WAITING_RUN_TYPES = ("scheduled",)  # run types whose input may land after the run starts


def input_landed(input_uri: str) -> bool:
    """Whether `input_uri` (a prefix, or a manifest file by its extension) is there to be read.

    False while it does not exist yet; ManifestError (permanent) when what is there can never be used as it
    is, or the URI itself is unusable ('..', a relative path).
    """
    try:
        uri = uris.check_storage_uri(input_uri, http=True)
    except uris.URIError as err:
        raise ManifestError(f"input_uri: {err}") from None
    wants_file = uris.extension(uri) in uris.MANIFEST_EXTENSIONS
    fs, path = storage.filesystem_for(uri)
    if not storage.is_local(fs):
        fs.invalidate_cache(path)  # the client is shared by the process: look at the store as it is now
    try:
        kind = fs.info(path).get("type")
    except FileNotFoundError:
        return False
    shown = uris.redact(uri)
    if wants_file and kind == "directory":
        raise ManifestError(f"input manifest {shown} is a folder, not a file")
    if not wants_file and kind != "directory":
        raise ManifestError(
            f"input prefix {shown} is a file, not a folder; a manifest file must end in "
            f".{', .'.join(uris.MANIFEST_EXTENSIONS)}"
        )
    return True


def check_input(input_uri: str, run_type: str) -> bool:
    """One look for a run of `run_type`: True when the input is there, False to look again later."""
    if input_landed(input_uri):
        return True
    if run_type not in WAITING_RUN_TYPES:
        raise ManifestError(
            f"input {uris.redact(input_uri)} does not exist; only scheduled runs wait for their input "
            f"(this is a {run_type} run)"
        )
    log.info("Input %s has not landed yet; looking again later", uris.redact(input_uri))
    return False


def wait_for_input(settings: Settings):
    """The DAG's sensor task, its poke interval and timeout fixed by the deployment's settings."""

    @task.sensor(
        task_id="wait_for_input",
        mode="reschedule",
        poke_interval=settings.input_poke_interval_s,
        timeout=settings.input_timeout_s,
    )
    @at_the_boundary
    def wait_for_input(run: dict) -> bool:
        """Pass when the run's input is there; wait for it in scheduled runs; fail at once when it cannot work."""
        return check_input(run["config"]["input_uri"], run["run_type"])

    return wait_for_input
