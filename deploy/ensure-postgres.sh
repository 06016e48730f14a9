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

if ! command -v apt-get >/dev/null 2>&1; then
  echo "ensure-postgres: no PostgreSQL server binaries and no apt-get; install PostgreSQL and set FLEETFLOW_PG_BIN to its bin directory" >&2
  exit 1
fi

sudo=()
if [ "$(id -u)" -ne 0 ]; then
  if ! command -v sudo >/dev/null 2>&1; then
    echo "ensure-postgres: installing postgresql needs root; run: apt-get install -y postgresql" >&2
    exit 1
  fi
  sudo=(sudo)
fi

echo "== install postgresql with apt-get (PostgreSQL server binaries are missing)"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q >"$log" 2>&1 ||
   ! "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql >>"$log" 2>&1; then
  tail -n 20 "$log" >&2
  echo "ensure-postgres: apt-get install postgresql failed (output above)" >&2
  exit 1
fi

if ! have_server; then
  echo "ensure-postgres: postgresql is installed but no /usr/lib/postgresql/*/bin/postgres exists; set FLEETFLOW_PG_BIN" >&2
  exit 1
fi
echo "   installed: $(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"
