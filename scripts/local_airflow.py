"""Airflow's services on this machine, as docker-compose.yaml runs them, for `make airflow` and the deploy test.

PostgreSQL (scripts/local_postgres.py) stands in for the postgres service; airflow-init's own command runs
first; then every other service of the Airflow image (api-server, scheduler, dag-processor, triggerer) starts
as its own process group with its own AIRFLOW_HOME and the environment compose gives it
(scripts/compose_env.py says what is mapped and why). Nothing else is configured: what works here works in
Docker, and a compose file that cannot run a task fails here too.

    python -m scripts.local_airflow [--state var/airflow] [--port 8080]      # what `make airflow` runs

reads `.env` like docker compose (or `.env.example` in dev mode when there is no `.env`), prints the UI's
address and login, and runs until Ctrl-C, then stops every process it started.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import requests
from dotenv import dotenv_values

from scripts.compose_env import (
    API_PORT,
    PRIVATE_PORTS,
    ComposeError,
    HostMapping,
    load,
    map_paths,
    service_environment,
    volume_mounts,
)
from scripts.local_postgres import Postgres

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yaml"
POSTGRES_SERVICE = "postgres"
API_SERVICE = "airflow-apiserver"
# Taken from this machine, as the image has its own; PATH too, with the venv's airflow first.
HOST_VARIABLES = ("HOME", "LANG", "LC_ALL", "TMPDIR", "TZ")
HEALTHY_COMPONENTS = ("metadatabase", "scheduler", "triggerer", "dag_processor")
INIT_TIMEOUT_S = 300
START_TIMEOUT_S = 240
STOP_TIMEOUT_S = 30


class ServiceError(RuntimeError):
    """A service did not come up or stopped early; the message ends with the tail of its log."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Deployment:
    """The compose file's services started here; a context manager that always stops what it started."""

    state: Path
    variables: Mapping[str, str]  # what compose would interpolate: the shell's environment over .env
    var_dir: Path | None = None  # what ./var mounts (default: this repository's var/)
    api_port: int = field(default_factory=free_port)
    compose_file: Path = COMPOSE_FILE
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.compose = load(self.compose_file, self.variables)
        services = self.compose["services"]
        image = self.compose["x-airflow-common"]["image"]
        airflow = [name for name, spec in services.items() if spec.get("image") == image]
        self.init_services = sorted(
            {
                dependency
                for name in airflow
                for dependency, condition in (services[name].get("depends_on") or {}).items()
                if condition.get("condition") == "service_completed_successfully"
            }
        )
        self.long_running = [name for name in airflow if name not in self.init_services]
        pg_env = services[POSTGRES_SERVICE]["environment"]
        self.postgres = Postgres(
            self.state / "postgres" / "data",
            user=pg_env["POSTGRES_USER"],
            password=pg_env["POSTGRES_PASSWORD"],
            database=pg_env.get("POSTGRES_DB", pg_env["POSTGRES_USER"]),
        )
        self.postgres_port = free_port()
        overrides = {"./var": self.var_dir} if self.var_dir is not None else {}
        ports = {API_PORT: self.api_port, **{setting: free_port() for setting in PRIVATE_PORTS}}
        self.mapping = HostMapping(
            state=self.state,
            addresses={
                POSTGRES_SERVICE: ("127.0.0.1", self.postgres_port),
                API_SERVICE: ("127.0.0.1", self.api_port),
            },
            ports=ports,
            bind_overrides=overrides,
        )
        self.api_url = f"http://127.0.0.1:{self.api_port}"

    def environment(self, service: str) -> dict[str, str]:
        base = {name: os.environ[name] for name in HOST_VARIABLES if name in os.environ}
        base["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}"
        return service_environment(self.compose, service, self.mapping, self.compose_file.parent, base)

    def log_file(self, service: str) -> Path:
        return self.state / "logs" / f"{service}.log"

    def __enter__(self) -> Deployment:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *_exc) -> None:
        self.stop()

    def start(self) -> None:
        environments = {name: self.environment(name) for name in [*self.init_services, *self.long_running]}
        (self.state / "logs").mkdir(parents=True, exist_ok=True)
        for name in environments:
            self.mapping.home(name).mkdir(parents=True, exist_ok=True)
            for host_path in self._mounts(name).values():
                host_path.mkdir(
                    parents=True, exist_ok=True
                )  # as docker creates a missing volume or bind source
        self.postgres.start(self.postgres_port)
        for name in self.init_services:
            self._run_init(name, environments[name])
        for name in self.long_running:
            self.processes[name] = self._spawn(name, self._command(name), environments[name])
        self.wait_healthy(START_TIMEOUT_S)

    def _command(self, service: str) -> list[str]:
        spec = self.compose["services"][service]
        command = spec["command"]
        command = shlex.split(command) if isinstance(command, str) else list(command)
        entrypoint = spec.get("entrypoint")
        if entrypoint is None:  # the image's entrypoint runs `airflow <command>`
            return [str(Path(sys.executable).parent / "airflow"), *command]
        return [*shlex.split(entrypoint), *command]

    def _run_init(self, service: str, environment: dict[str, str]) -> None:
        command = self._command(service)
        command = [
            map_paths(part, self._mounts(service)) for part in command
        ]  # container paths in its script
        with self.log_file(service).open("a") as log:
            result = subprocess.run(
                command,
                env=environment,
                cwd=self.mapping.home(service),
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=INIT_TIMEOUT_S,
                check=False,
            )
        if result.returncode != 0:
            raise ServiceError(f"{service} exited {result.returncode}\n{self.log_tail(service)}")

    def _mounts(self, service: str) -> dict[str, Path]:
        return volume_mounts(self.compose, service, self.mapping, self.compose_file.parent)

    def _spawn(self, service: str, command: list[str], environment: dict[str, str]) -> subprocess.Popen:
        log = self.log_file(service).open("a")
        try:
            return subprocess.Popen(
                command,
                env=environment,
                cwd=self.mapping.home(service),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: stop() ends it with all its children
            )
        finally:
            log.close()

    def wait_healthy(self, timeout_s: float) -> dict:
        """Until /api/v2/monitor/health reports every component healthy; ServiceError if a service exits."""
        deadline = time.monotonic() + timeout_s
        last: object = None
        while time.monotonic() < deadline:
            self.check_running()
            try:
                health = requests.get(f"{self.api_url}/api/v2/monitor/health", timeout=5).json()
                last = health
                if all((health.get(name) or {}).get("status") == "healthy" for name in HEALTHY_COMPONENTS):
                    return health
            except (requests.RequestException, ValueError) as err:
                last = err
            time.sleep(2)
        raise ServiceError(f"not healthy after {timeout_s:.0f} s: {last}\n{self.log_tails()}")

    def check_running(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise ServiceError(f"{name} exited {process.returncode}\n{self.log_tail(name)}")

    def log_tail(self, service: str, chars: int = 3000) -> str:
        path = self.log_file(service)
        return f"--- {path} ---\n{path.read_text(errors='replace')[-chars:]}" if path.exists() else ""

    def log_tails(self) -> str:
        return "\n".join(self.log_tail(name, 1500) for name in self.processes)

    def stop(self) -> None:
        """SIGTERM to every process group, SIGKILL to those still there after STOP_TIMEOUT_S; then Postgres."""
        for process in self.processes.values():
            _signal_group(process, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for process in self.processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            _signal_group(process, signal.SIGKILL)  # children left behind by an exited leader, too
            process.wait(timeout=STOP_TIMEOUT_S)
        self.processes.clear()
        self.postgres.stop()


def _signal_group(process: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(process.pid, signum)
    except ProcessLookupError:
        pass


def compose_variables(env_file: Path | None, environ: Mapping[str, str]) -> dict[str, str]:
    """Compose's interpolation variables: the shell's environment over the .env file's values."""
    values = {k: v for k, v in (dotenv_values(env_file) if env_file else {}).items() if v is not None}
    return {**values, **environ}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--state", type=Path, default=ROOT / "var" / "airflow", help="homes, logs, Postgres")
    parser.add_argument("--port", type=int, default=8080, help="the api-server's (UI's) port")
    args = parser.parse_args(argv)
    env_file = ROOT / ".env"
    environ = dict(os.environ)
    if not env_file.exists():
        env_file = ROOT / ".env.example"
        environ["AIRFLOW_DEV_MODE"] = "true"
        print("no .env: using .env.example's placeholder secrets (AIRFLOW_DEV_MODE=true); see .env.example")
    deployment = Deployment(
        state=args.state.resolve(), variables=compose_variables(env_file, environ), api_port=args.port
    )
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    try:
        with deployment:
            print(
                f"\nAirflow UI: {deployment.api_url}  (SimpleAuthManager, all admins: no login needed)\n"
                f"DAGs from {ROOT / 'dags'}; service logs in "
                f"{deployment.state / 'logs'}. Ctrl-C stops every service.",
                flush=True,
            )
            while not stop["now"]:
                deployment.check_running()
                time.sleep(2)
    except KeyboardInterrupt:
        pass
    except ComposeError as err:
        print(f"docker-compose.yaml: {err}", file=sys.stderr)
        return 1
    print("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
