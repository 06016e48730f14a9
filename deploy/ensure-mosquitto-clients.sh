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

# shellcheck source=deploy/apt-install.sh
. "$(dirname "$0")/apt-install.sh"
apt_install ensure-mosquitto-clients mosquitto-clients "the mosquitto clients are missing; the e2e tests use them (FLEETFLOW_SKIP_MOSQUITTO=1 skips those tests)"

if ! have_clients; then
  echo "ensure-mosquitto-clients: mosquitto-clients is installed but mosquitto_sub/mosquitto_pub/mosquitto_rr are not on PATH" >&2
  exit 1
fi
echo "   installed: $(command -v mosquitto_sub) $(command -v mosquitto_pub) $(command -v mosquitto_rr)"
