"""A PostgreSQL cluster of its own in one folder, standing in for docker-compose.yaml's postgres service.

Debian's server binaries (scripts/install_postgres.sh installs them) run a throwaway cluster in `data_dir`,
listening on 127.0.0.1 and on a unix socket inside that folder only, so it never collides with the machine's
own cluster or another test's. The role, password and database are the compose service's POSTGRES_* values.
PostgreSQL refuses to run as root, so as root the cluster belongs to, and runs as, the `postgres` user.
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

TIMEOUT_S = 120


class PostgresError(RuntimeError):
    """The cluster could not be created, started or stopped; the message carries the server's own words."""


@dataclass(frozen=True)
class Postgres:
    data_dir: Path
    user: str
    password: str
    database: str

    @property
    def socket_dir(self) -> Path:
        return self.data_dir.parent / "socket"

    def start(self, port: int) -> None:
        """Create the cluster on first use, start it on `port` and create the database if it is missing."""
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        self._chown(self.socket_dir)
        options = f"-p {port} -k {self.socket_dir} -c listen_addresses=127.0.0.1"
        self._run(
            "pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_file), "-w", "-t", str(TIMEOUT_S),
            "-o", options, "start",
        )  # fmt: skip
        exists = self._run(
            "psql", "-h", str(self.socket_dir), "-p", str(port), "-U", self.user, "-d", "postgres", "-tAc",
            f"SELECT 1 FROM pg_database WHERE datname = '{self.database}'",
        )  # fmt: skip
        if exists.strip() != "1":
            self._run("createdb", "-h", str(self.socket_dir), "-p", str(port), "-U", self.user, self.database)

    def stop(self) -> None:
        if (self.data_dir / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", str(TIMEOUT_S), "stop")

    @property
    def log_file(self) -> Path:
        return self.data_dir.parent / "postgres.log"

    def _initdb(self) -> None:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.database):
            raise PostgresError(f"database name {self.database!r} is not a plain identifier")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        password_file = self.data_dir.parent / "pwfile"
        password_file.write_text(self.password + "\n")
        password_file.chmod(0o600)
        for path in (self.data_dir, self.data_dir.parent, password_file):
            self._chown(path)
        try:
            self._run(
                "initdb", "-D", str(self.data_dir), "-U", self.user, f"--pwfile={password_file}",
                "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync",
            )  # fmt: skip
        finally:
            password_file.unlink()

    def _chown(self, path: Path) -> None:
        if os.geteuid() == 0:
            account = pwd.getpwnam("postgres")
            os.chown(path, account.pw_uid, account.pw_gid)

    def _run(self, program: str, *args: str) -> str:
        command = [_binary(program), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
        if result.returncode != 0:
            log = self.log_file.read_text()[-2000:] if self.log_file.exists() else ""
            raise PostgresError(f"{program} failed ({result.returncode}): {result.stderr.strip()}\n{log}")
        return result.stdout


def _binary(program: str) -> str:
    """Debian keeps the server binaries off PATH, under /usr/lib/postgresql/<version>/bin; the newest wins."""
    candidates = sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{program}"),
        key=lambda path: int(re.search(r"/postgresql/(\d+)/", path)[1]),
    )
    found = candidates[-1] if candidates else shutil.which(program)
    if found is None:
        raise PostgresError(f"{program} not found: run scripts/install_postgres.sh (Debian's postgresql)")
    return found
