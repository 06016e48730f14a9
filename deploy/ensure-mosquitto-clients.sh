#!/usr/bin/env bash
# Makes sure Debian's MQTT command-line clients (mosquitto_sub, mosquitto_pub, mosquitto_rr) are on this machine, installing
# the distribution's `mosquitto-clients` package with apt-get when they are not. The e2e tests drive a device
# with them, so the device channel is checked against an MQTT implementation that fleetflow did not write.
# Only the clients are installed: no mosquitto broker is started or needed.
set -euo pipefail

have_clients() {
  command -v mosquitto_sub >/dev/null 2>&1 && command -v mosquitto_pub >/dev/null 2>&1 &&
    command -v mosquitto_rr >/dev/null 2>&1
}

if have_clients; then
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "ensure-mosquitto-clients: no mosquitto_sub/mosquitto_pub/mosquitto_rr and no apt-get; install the mosquitto clients (or set FLEETFLOW_SKIP_MOSQUITTO=1 to skip their tests)" >&2
  exit 1
fi

sudo=()
if [ "$(id -u)" -ne 0 ]; then
  if ! command -v sudo >/dev/null 2>&1; then
    echo "ensure-mosquitto-clients: installing mosquitto-clients needs root; run: apt-get install -y mosquitto-clients" >&2
    exit 1
  fi
  sudo=(sudo)
fi

echo "== install mosquitto-clients with apt-get (the mosquitto clients are missing; the e2e tests use them)"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q >"$log" 2>&1 ||
   ! "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends mosquitto-clients >>"$log" 2>&1; then
  tail -n 20 "$log" >&2
  echo "ensure-mosquitto-clients: apt-get install mosquitto-clients failed (output above)" >&2
  exit 1
fi

if ! have_clients; then
  echo "ensure-mosquitto-clients: mosquitto-clients is installed but mosquitto_sub/mosquitto_pub/mosquitto_rr are not on PATH" >&2
  exit 1
fi
echo "   installed: $(command -v mosquitto_sub) $(command -v mosquitto_pub) $(command -v mosquitto_rr)"
