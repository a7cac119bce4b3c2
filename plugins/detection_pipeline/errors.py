"""What a failed task means to Airflow, decided in one place: retry it, or fail the run at once.

A `PermanentError` is deterministic (a bad conf, manifest file, ground truth, weights file, a warehouse
table whose columns diverged): the same input fails the same way, so a retry only burns time and, after
detect, GPU hours. `at_the_boundary` wraps every task: a permanent error becomes `AirflowFailException`
(no retry), anything else keeps Airflow's retries. Either way the message and the logged traceback pass
the redactor first, and the original exception is dropped (`from None`): texts from fsspec, aiohttp,
gcsfs and the Google client carry whole URLs with their tokens, and Airflow logs every exception it gets.
For the same reason, once a task body starts, every log record its process creates is redacted (`redact_logs`).
"""

from __future__ import annotations

import functools
import logging
import traceback
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from detection_engine.redaction import redact_logs, redact_text

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")


class PermanentError(Exception):
    """A failure that retrying cannot fix: the run fails at once."""


class ConfigError(PermanentError, ValueError):
    """A run configuration that must not start a single pod; the message starts with the field's name."""


class ManifestError(PermanentError, RuntimeError):
    """The input cannot be turned into a manifest (missing, unreadable, wrong shape)."""


def redacted_message(error: BaseException) -> str:
    """`Type: message` of an exception, redacted: what may reach a log, an error row, a record or a report."""
    text = str(error)
    return redact_text(f"{type(error).__name__}: {text}" if text else type(error).__name__)


def at_the_boundary(func: Callable[P, R]) -> Callable[P, R]:
    """Run a task body; re-raise its failure redacted, as `AirflowFailException` when it is permanent."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        from airflow.sdk.exceptions import (
            AirflowException,
            AirflowFailException,
            AirflowRescheduleException,
            AirflowSkipException,
        )

        redact_logs()  # library log lines (fsspec logs each URL at DEBUG) pass the redactor too
        try:
            return func(*args, **kwargs)
        except (AirflowSkipException, AirflowRescheduleException):
            raise  # control flow, not failures
        except Exception as error:
            permanent = isinstance(error, PermanentError | AirflowFailException)
            trace = redact_text("".join(traceback.format_exception(error)))
            log.error("%s failed (%s):\n%s", func.__name__, "permanent" if permanent else "retryable", trace)
            # Airflow's own exceptions already say what happened; others are named by their type.
            message = (
                redact_text(str(error)) if isinstance(error, AirflowException) else redacted_message(error)
            )
            if permanent:
                raise AirflowFailException(message) from None
            raise AirflowException(message) from None

    return wrapper
