#!/usr/bin/env bash
# Makes sure PostgreSQL server binaries are on this machine, installing the distribution's `postgresql`
# package with apt-get when they are not. fleetflow runs its own cluster from these binaries (own data
# directory, own port); it never uses or changes a system cluster.
set -euo pipefail

have_server() {
  if [ -n "${FLEETFLOW_PG_BIN:-}" ] && [ -x "$FLEETFLOW_PG_BIN/postgres" ]; then return 0; fi
  compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null
}

if have_server; then
  exit 0
fi

# shellcheck source=deploy/apt-install.sh
. "$(dirname "$0")/apt-install.sh"
apt_install ensure-postgres postgresql "PostgreSQL server binaries are missing; or install PostgreSQL and set FLEETFLOW_PG_BIN to its bin directory"

if ! have_server; then
  echo "ensure-postgres: postgresql is installed but no /usr/lib/postgresql/*/bin/postgres exists; set FLEETFLOW_PG_BIN" >&2
  exit 1
fi
echo "   installed: $(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"
