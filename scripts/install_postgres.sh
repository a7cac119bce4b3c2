#!/usr/bin/env bash
# Installs Debian's PostgreSQL server for `make airflow` and the deployment test (tests/deploy/test_services.py),
# the metadata DB that docker-compose.yaml runs as its postgres service. Idempotent: does nothing when the
# server binaries are already there. Only installs: scripts/local_airflow.py creates and starts a throwaway
# cluster of its own (the Debian package's default cluster is left alone).
set -euo pipefail

if compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || command -v initdb >/dev/null 2>&1; then
    echo "postgresql already installed: $(ls -d /usr/lib/postgresql/*/ 2>/dev/null | tr '\n' ' ')"
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
else
    echo "install_postgres.sh: need root (or sudo) to apt-get install postgresql" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends postgresql
echo "installed: $(ls -d /usr/lib/postgresql/*/)"
