#!/bin/sh
# The Temporal namespace fleetflow runs in and its custom search attributes (internal/searchattr: workflows
# upsert them, operators filter the UI with them), with the admin tools' temporal CLI. Safe to re-run: it
# creates only what is missing. The same script runs in the Helm chart's setup Job (deploy/validate checks that
# the two copies and internal/searchattr agree).
# Environment: TEMPORAL_ADDRESS (host:port of the frontend), TEMPORAL_NAMESPACE, TEMPORAL_NAMESPACE_RETENTION,
# and the temporal CLI's TLS settings (TEMPORAL_TLS_*) when the frontend asks for them.
set -eu

ns=${TEMPORAL_NAMESPACE:-default}
retention=${TEMPORAL_NAMESPACE_RETENTION:-720h}
ATTRS="FleetOp=Keyword FleetOpState=Keyword FleetDevicesTotal=Int FleetDevicesDone=Int FleetDevicesFailed=Int FleetStage=Keyword FleetDevicesApplied=Double FleetMetrics=KeywordList"

# retry CMD...: the frontend may still be starting, and a new namespace takes a few seconds to reach every
# service's cache.
retry() {
  n=0
  until "$@"; do
    n=$((n + 1))
    if [ "$n" -ge 60 ]; then
      echo "temporal-setup: giving up on: $*" >&2
      return 1
    fi
    sleep 2
  done
}

retry temporal operator cluster health
if temporal operator namespace describe --namespace "$ns" >/dev/null 2>&1; then
  echo "temporal-setup: namespace $ns exists"
else
  echo "temporal-setup: creating namespace $ns (retention $retention)"
  retry temporal operator namespace create --namespace "$ns" --retention "$retention"
fi

# One call for all of them: the CLI refuses an existing attribute only when its type differs, which is the
# mistake to stop at.
set --
for attr in $ATTRS; do
  set -- "$@" --name "${attr%%=*}" --type "${attr#*=}"
done
echo "temporal-setup: search attributes $ATTRS"
retry temporal operator search-attribute create --namespace "$ns" "$@"
echo "temporal-setup: done"
