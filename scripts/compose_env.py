"""The environment docker-compose.yaml gives each service, made to work on one machine outside Docker.

The compose file is the one source of truth for the services' environment: this module reads it (PyYAML, with
its `<<` merges), substitutes `${VAR}` the way docker compose does, and then changes only what makes sense
only inside a container, through one explicit mapping (`HostMapping`):

- host names of compose services in URLs (`@postgres/`, `http://airflow-apiserver:8080/`) become the local
  address that service listens on here;
- container paths become the host paths their `volumes:` entries mount (`./dags:/opt/airflow/dags` is this
  repository's dags/; a named volume is a folder under the state dir), with per-source overrides;
- what the apache/airflow image gives every container implicitly (its AIRFLOW_HOME and the folders under it)
  is made explicit, because here every service has its own AIRFLOW_HOME;
- the ports every container has to itself (api-server, scheduler health check, log servers) become free
  local ports, so the services on one machine do not collide.

Anything else is passed through unchanged, so a compose file that lacks a setting (say, the shared JWT secret)
deploys here exactly as broken as it would in Docker. A URL to a host or a container path that the mapping
does not know is an error, never a silent guess.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import yaml

IMAGE_HOME = "/opt/airflow"  # AIRFLOW_HOME in the apache/airflow image
# Airflow's defaults under the image's AIRFLOW_HOME, which each container gets without saying so, for the
# folders compose mounts. The plugins folder is not one: it stays Airflow's default, the (empty) plugins/ of each
# service's own AIRFLOW_HOME here as in the image, since the project's packages are installed, not mounted.
IMAGE_DEFAULTS = {
    "AIRFLOW__CORE__DAGS_FOLDER": f"{IMAGE_HOME}/dags",
    "AIRFLOW__LOGGING__BASE_LOG_FOLDER": f"{IMAGE_HOME}/logs",
}
# Settings of the ports a container has to itself; on one machine each gets a port of its own.
PRIVATE_PORTS = (
    "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT",
    "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT",
    "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT",
)
API_PORT = "AIRFLOW__API__PORT"
# A container listens on all its interfaces and compose publishes what `ports:` says; here the api-server
# listens on this machine's loopback only.
LISTEN_HOST = {"AIRFLOW__API__HOST": "127.0.0.1"}
DEFAULT_PORTS = {"postgresql": 5432, "http": 80, "https": 443}

_VARIABLE = re.compile(r"\$(?:\$|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\})")


class ComposeError(ValueError):
    """docker-compose.yaml asks for something this machine cannot give as asked; the message says what."""


def load(path: Path, variables: Mapping[str, str]) -> dict:
    """The compose file with every string interpolated, as docker compose sees it."""
    return _interpolate_tree(yaml.safe_load(path.read_text()), variables)


def _interpolate_tree(node: object, variables: Mapping[str, str]) -> object:
    if isinstance(node, str):
        return interpolate(node, variables)
    if isinstance(node, list):
        return [_interpolate_tree(item, variables) for item in node]
    if isinstance(node, dict):
        return {key: _interpolate_tree(value, variables) for key, value in node.items()}
    return node


def interpolate(value: str, variables: Mapping[str, str]) -> str:
    """`${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?error}`, `${VAR?error}` and `$$` as compose has them."""

    def replace(match: re.Match) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        if name is None:
            return "$"
        value = variables.get(name)
        unset = value is None or (op is not None and op.startswith(":") and value == "")
        if op in (":?", "?") and unset:
            raise ComposeError(f"required variable {name} is missing: {arg or 'no message'}")
        if op in (":-", "-") and unset:
            return arg
        return value or ""

    return _VARIABLE.sub(replace, value)


@dataclass(frozen=True)
class HostMapping:
    """What stands in, on this machine, for the containers' network, image and volumes."""

    state: Path  # homes, named volumes and service logs live here
    addresses: Mapping[str, tuple[str, int]]  # compose service -> (host, port) it listens on here
    ports: Mapping[str, int]  # API_PORT and PRIVATE_PORTS -> free local ports
    bind_overrides: Mapping[str, Path] = field(default_factory=dict)  # volume source ("./var") -> host path

    def home(self, service: str) -> Path:
        return self.state / "homes" / service


def service_environment(
    compose: dict,
    service: str,
    mapping: HostMapping,
    compose_dir: Path,
    base: Mapping[str, str],
) -> dict[str, str]:
    """The environment of `service` here: `base` (PATH and the like), the image's implicit settings, the
    service's own `environment:` (of an interpolated `compose`), then hosts, paths and private ports mapped."""
    spec = compose["services"][service]
    declared = spec.get("environment") or {}
    if not isinstance(declared, Mapping):
        raise ComposeError(f"{service}: environment must be a mapping (KEY: value), not a list")
    environment = {**IMAGE_DEFAULTS}
    for key, raw in declared.items():
        environment[key] = "" if raw is None else _scalar(raw)
    mounts = volume_mounts(compose, service, mapping, compose_dir)
    environment = {
        key: map_paths(map_hosts(value, compose, mapping), mounts) for key, value in environment.items()
    }
    for key, value in environment.items():
        if IMAGE_HOME in value:
            raise ComposeError(f"{service}: {key} names {value!r}, a container path no volume of it mounts")
    environment.update({key: str(port) for key, port in mapping.ports.items()})
    environment.update(LISTEN_HOST)
    environment["AIRFLOW_HOME"] = str(mapping.home(service))
    return {**base, **environment}


def volume_mounts(compose: dict, service: str, mapping: HostMapping, compose_dir: Path) -> dict[str, Path]:
    """Container path -> host path for each `volumes:` entry of `service` ("SOURCE:TARGET[:MODE]")."""
    mounts = {}
    for entry in compose["services"][service].get("volumes") or []:
        source, target, *_ = entry.split(":")
        if source in mapping.bind_overrides:
            host = mapping.bind_overrides[source]
        elif source.startswith((".", "/")):
            host = (compose_dir / source).resolve()
        else:  # a named volume: one folder that every service mounting it shares
            host = mapping.state / "volumes" / source
        mounts[target.rstrip("/")] = Path(host)
    return mounts


def map_paths(value: str, mounts: Mapping[str, Path]) -> str:
    """Container paths in `value` (alone or inside a URI like duckdb:////opt/...) as the host paths mounted."""
    for target in sorted(mounts, key=len, reverse=True):
        value = re.sub(rf"{re.escape(target)}(?=/|$)", lambda _, t=target: str(mounts[t]), value)
    return value


def map_hosts(value: str, compose: dict, mapping: HostMapping) -> str:
    """A URL whose host is a compose service, pointed at where that service listens here."""
    if "://" not in value:
        return value
    parts = urlsplit(value)
    host = parts.hostname
    if host is None or host not in compose["services"]:
        return value
    if host not in mapping.addresses:
        raise ComposeError(f"{value!r} names the compose service {host!r}, which is not run here")
    local_host, local_port = mapping.addresses[host]
    container_port = parts.port or DEFAULT_PORTS.get(parts.scheme.split("+")[0])
    listens = container_port_of(compose, host)
    if listens is not None and container_port != listens:
        raise ComposeError(f"{value!r} uses port {container_port}, but {host} listens on {listens}")
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@{local_host}:{local_port}" if userinfo else f"{local_host}:{local_port}"
    return parts._replace(netloc=netloc).geturl()


def container_port_of(compose: dict, service: str) -> int | None:
    """The container port a service publishes first ("HOST:CONTAINER"), or None when it publishes none."""
    ports = compose["services"][service].get("ports") or []
    return int(str(ports[0]).split(":")[-1].split("/")[0]) if ports else None


def _scalar(raw: object) -> str:
    if isinstance(raw, bool):
        return "true" if raw else "false"
    return str(raw)
