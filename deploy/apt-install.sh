#!/usr/bin/env bash
# apt_install WHO PACKAGE WHY: installs one Debian package with apt-get (through sudo when not root), quietly,
# showing apt's last lines and failing when it fails. Sourced by the ensure-*.sh scripts, which decide whether
# the package is needed and check afterwards that what they need is there.

apt_install() {
  local who=$1 package=$2 why=$3
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "$who: $why, and there is no apt-get to install $package" >&2
    return 1
  fi
  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null 2>&1; then
      echo "$who: installing $package needs root; run: apt-get install -y $package" >&2
      return 1
    fi
    sudo=(sudo)
  fi
  echo "== install $package with apt-get ($why)"
  local log
  log=$(mktemp)
  if ! "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q >"$log" 2>&1 ||
     ! "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$package" >>"$log" 2>&1; then
    tail -n 20 "$log" >&2
    rm -f "$log"
    echo "$who: apt-get install $package failed (output above)" >&2
    return 1
  fi
  rm -f "$log"
}
