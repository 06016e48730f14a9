#!/usr/bin/env bash
# The demo behind `make demo` (which runs `make up` first): provision 1,000 simulated devices from a generated
# manifest with a ProvisionFleet workflow, start the simulator with their freshly issued credentials, let the
# workflow wait until every device has connected and reported its capabilities, and print the fleet by model.
# Safe to run again: the second run finds the devices already present and reconnects them.
set -euo pipefail
cd "$(dirname "$0")/.."

ff=bin/fleetflow
dir=.fleetflow/demo
manifest=$dir/devices.csv
creds=$dir/creds.ndjson
fresh=$dir/creds-new.ndjson
devices=1000
mkdir -p "$dir"
rm -f "$fresh" "$fresh.pending" "$fresh.tmp"

echo "== manifest: $devices devices across regions, sites and models ($manifest)"
awk -v n="$devices" 'BEGIN {
  split("eu us apac", region, " "); split("th-100 th-200 aq-300 gw-400 pm-500", model, " ")
  print "id,region,site,model,fleet"
  for (i = 1; i <= n; i++) {
    r = region[(i % 3) + 1]
    printf "demo-%04d,%s,%s-site-%d,%s,demo\n", i, r, r, (i % 7) + 1, model[(i % 5) + 1]
  }
}' > "$manifest"

echo "== provision (workflow ProvisionFleet; it waits for the devices to connect and report)"
"$ff" provision --file "$manifest" --name demo --creds-out "$fresh" --await-connect 3m --wait &
prov=$!

# The CLI writes the credentials file as soon as every batch has committed, while the workflow goes on to
# wait for the devices; start the simulator then.
for _ in $(seq 1 600); do
  [ -f "$fresh" ] && break
  if ! kill -0 "$prov" 2>/dev/null; then break; fi
  sleep 0.2
done
if [ ! -f "$fresh" ]; then
  wait "$prov" || true
  echo "demo: provisioning ended without writing credentials; see the output above" >&2
  exit 1
fi
# Keep the credentials of every demo device across runs: new secrets replace old ones for the same id.
touch "$creds"
chmod 600 "$creds"
if [ -s "$fresh" ]; then
  awk 'FNR == NR { match($0, /"id":"[^"]*"/); fresh[substr($0, RSTART, RLENGTH)] = 1; print; next }
       { match($0, /"id":"[^"]*"/); if (!(substr($0, RSTART, RLENGTH) in fresh)) print }' "$fresh" "$creds" > "$creds.tmp"
  mv "$creds.tmp" "$creds"
  chmod 600 "$creds"
fi
echo "== simulator: $(wc -l < "$creds") devices with their credentials ($creds)"
"$ff" dev simulate -- --creds "$creds" --telemetry-every 30s

wait "$prov"

# A second run creates nothing new, so its workflow has nothing to wait for; wait here for the reconnects.
q="SELECT COUNT() AS n FROM devices WHERE tags.fleet = 'demo' AND connectionState = 'connected' AND IS_DEFINED(properties.reported.model)"
for _ in $(seq 1 120); do
  n=$("$ff" devices query -o json "$q" | tr -dc '0-9')
  [ "${n:-0}" -ge "$devices" ] && break
  sleep 1
done
echo "== $n of $devices demo devices connected and reported their capabilities"

echo
echo "== SELECT properties.reported.model, COUNT() AS n FROM devices WHERE tags.fleet = 'demo' GROUP BY properties.reported.model"
"$ff" devices query "SELECT properties.reported.model, COUNT() AS n FROM devices WHERE tags.fleet = 'demo' GROUP BY properties.reported.model ORDER BY properties.reported.model"
echo
echo "== SELECT tags.region, COUNT() AS n FROM devices WHERE tags.fleet = 'demo' GROUP BY tags.region"
"$ff" devices query "SELECT tags.region, COUNT() AS n FROM devices WHERE tags.fleet = 'demo' GROUP BY tags.region ORDER BY tags.region"
echo
ui=${FLEETFLOW_TEMPORAL_UI:-http://127.0.0.1:8233}
echo "Temporal UI: $ui/namespaces/${TEMPORAL_NAMESPACE:-default}/workflows?query=FleetOp%3D%22provision%22"
echo "The stack and the simulated devices keep running; try:"
echo "  bin/fleetflow devices get demo-0001"
echo "  bin/fleetflow twin get demo-0001"
echo "  bin/fleetflow devices query \"SELECT * FROM devices WHERE tags.region = 'eu' AND properties.reported.model = 'th-100'\""
echo "  make down    # stops everything make demo started"
