#!/usr/bin/env bash
# The demo behind `make demo` (which runs `make up` first): provision 1,000 simulated devices from a generated
# manifest with a ProvisionFleet workflow, start the simulator with their freshly issued credentials, let the
# workflow wait until every device has connected and reported its capabilities, and print the fleet by model.
# Then configure the fleet: a FleetJob sets a desired property on one region, a direct method reads one
# device's diagnostics, a FirmwareRollout of a good firmware completes all its waves, and a rollout of a bad
# one (the simulator fails its install on a share of the devices) stops in its first wave and rolls back.
# Before configuring, plan: a metadata scheme (a refused manifest row, a query warning) and a group; after the
# rollouts, a declarative configuration on the group that newly provisioned devices pick up by themselves; a
# rollout plan inside a maintenance window. Then monitor (the health check, a health rule on a group, alerts),
# retire and replace devices, and let five devices that were never
# provisioned enroll themselves on first contact through an enrollment group.
# Safe to run again: the second run finds the devices already present, reconnects them, and rolls out new
# firmware versions (numbered by run).
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
# Firmware versions are immutable in the catalogue, so every run rolls out versions of its own.
run=$(( $(cat "$dir/run" 2>/dev/null || echo 0) + 1 ))
echo "$run" > "$dir/run"
good="2.$run.0"
bad="2.$run.1-rc1"

echo "== manifest: $devices devices across regions, sites and models ($manifest)"
awk -v n="$devices" 'BEGIN {
  split("eu us apac", region, " "); split("th-100 th-200 aq-300 gw-400 pm-500", model, " ")
  print "id,region,site,model,fleet"
  for (i = 1; i <= n; i++) {
    r = region[(i % 3) + 1]
    printf "demo-%04d,%s,%s-site-%d,%s,demo\n", i, r, r, (i % 7) + 1, model[(i % 5) + 1]
  }
}' > "$manifest"
# Devices an earlier run retired (demo-0999, and demo-0998 which demo-r0998 replaced) stay retired: a retired
# id cannot be provisioned again until it is purged, so a second run leaves them out of its manifest.
retired=$("$ff" devices query -o json "SELECT deviceId FROM devices WHERE status = 'retired' AND STARTSWITH(deviceId, 'demo-')" |
  grep -o 'demo-[0-9]*' || true)
if [ -n "$retired" ]; then
  awk -F, -v r="$(echo $retired)" 'BEGIN { n = split(r, a, " "); for (i = 1; i <= n; i++) skip[a[i]] = 1 } !($1 in skip)' \
    "$manifest" > "$manifest.tmp"
  mv "$manifest.tmp" "$manifest"
fi

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
echo "   firmware updates take 3 x 200 ms; firmware $bad fails to install on 30% of the devices (simulated)"
"$ff" dev simulate -- --creds "$creds" --telemetry-every 30s --firmware-delay 200ms --fail-install "$bad=0.3"

wait "$prov"

# A second run creates nothing new, so its workflow has nothing to wait for; wait here for the reconnects.
# Retired demo devices (a later step retires one) are out of the fleet; the others must all be back.
want=$("$ff" devices query -o json "SELECT COUNT() AS n FROM devices WHERE tags.fleet = 'demo'" | tr -dc '0-9')
q="SELECT COUNT() AS n FROM devices WHERE tags.fleet = 'demo' AND connectionState = 'connected' AND IS_DEFINED(properties.reported.model)"
for _ in $(seq 1 120); do
  n=$("$ff" devices query -o json "$q" | tr -dc '0-9')
  [ "${n:-0}" -ge "$want" ] && break
  sleep 1
done
echo "== $n of $want demo devices connected and reported their capabilities"

echo
echo "== SELECT properties.reported.model, COUNT() AS n FROM devices WHERE tags.fleet = 'demo' GROUP BY properties.reported.model"
"$ff" devices query "SELECT properties.reported.model, COUNT() AS n FROM devices WHERE tags.fleet = 'demo' GROUP BY properties.reported.model ORDER BY properties.reported.model"
echo
echo "== SELECT tags.region, COUNT() AS n FROM devices WHERE tags.fleet = 'demo' GROUP BY tags.region"
"$ff" devices query "SELECT tags.region, COUNT() AS n FROM devices WHERE tags.fleet = 'demo' GROUP BY tags.region ORDER BY tags.region"

echo
echo "== plan 1/2: a metadata scheme for the tags (a SchemeCheck workflow checks the fleet, then puts it in force)"
cat > "$dir/scheme.json" <<'JSON'
{"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
 "properties": {"region": {"enum": ["eu", "us", "apac"]},
                "site": {"type": "string", "pattern": "^(eu|us|apac)-site-[0-9]+$"},
                "model": {"type": "string"}, "fleet": {"type": "string"}},
 "required": ["region"]}
JSON
"$ff" scheme set "$dir/scheme.json" | sed 's/^/   /'
echo "   a manifest with a row the scheme refuses: the good row is provisioned, the bad one reported by line"
printf 'id,region,site,model,fleet\ndemo-x001,eu,eu-site-1,th-100,demo-extra\ndemo-x002,mars,mars-site-1,th-100,demo-extra\n' > "$dir/extra.csv"
rm -f "$dir/creds-extra.ndjson"
"$ff" provision --file "$dir/extra.csv" --creds-out "$dir/creds-extra.ndjson" 2>&1 | sed 's/^/   /' || true
# demo-x001 connects with the others from now on (a second run finds it present: no new secret).
[ -s "$dir/creds-extra.ndjson" ] && cat "$dir/creds-extra.ndjson" >> "$creds"
echo "   a query with a typo in a tag path is answered with a warning that names the path it meant:"
"$ff" devices query "SELECT COUNT() AS n FROM devices WHERE tags.regoin = 'eu'" 2>&1 | sed 's/^/   /'

echo "== plan 2/2: a group (dynamic: its members are what its query selects whenever it is used)"
"$ff" group show eu-th100 >/dev/null 2>&1 ||
  "$ff" group create eu-th100 --query "SELECT * FROM devices WHERE tags.fleet = 'demo' AND tags.region = 'eu' AND tags.model = 'th-100'"
"$ff" group list

echo
echo "== configure 1/5: a FleetJob sets desired telemetryInterval = 60 on every demo device in region eu"
"$ff" job start --query "SELECT * FROM devices WHERE tags.fleet = 'demo' AND tags.region = 'eu'" \
  --set-desired '{"telemetryInterval": 60}' --timeout 1m
"$ff" twin get demo-0003 | sed -n '/DESIRED KEY/,/^$/p'

echo "== configure 2/5: direct method diagnostics on demo-0001"
"$ff" method invoke demo-0001 diagnostics

echo
echo "== configure 3/5: the firmware catalogue gets $good (good) and $bad (bad)"
sha() { printf '%s' "$1" | sha256sum | cut -d' ' -f1; }
"$ff" firmware add --version "$good" --url "https://firmware.example/th/$good.bin" --sha256 "$(sha "$good")" --notes "demo run $run"
"$ff" firmware add --version "$bad" --url "https://firmware.example/th/$bad.bin" --sha256 "$(sha "$bad")" --notes "demo run $run, release candidate"
all="SELECT * FROM devices WHERE tags.fleet = 'demo'"
"$ff" rollout plan --firmware "$good" --query "$all" --waves 1%,10%,50%,100% --bake 3s
echo "   the same plan inside a maintenance window, Sundays 02:00-04:00 Berlin time: when each wave can start"
"$ff" rollout plan --firmware "$good" --query "$all" --waves 1%,10%,50%,100% --bake 3s \
  --window "Sun 02:00-04:00" --timezone Europe/Berlin | sed 's/^/   /'
echo
echo "== rollout of the good firmware $good: waves 1%,10%,50%,100%, each device must stay healthy for 3 s"
good_out=$("$ff" rollout start --firmware "$good" --query "$all" --waves 1%,10%,50%,100% --max-failures 5% --bake 3s)
echo "$good_out"

echo
echo "== configure 4/5: rollout of the bad firmware $bad: it fails on 30% of the devices, the limit is 5%"
# It rolls back: the CLI exits 3 (finished with per-device failures), which is what the demo shows.
bad_out=$("$ff" rollout start --firmware "$bad" --query "$all" --waves 1%,10%,50%,100% --max-failures 5% --bake 3s) || [ $? -eq 3 ]
echo "$bad_out"

echo
echo "== firmware versions now running on the demo fleet"
"$ff" devices query "SELECT properties.reported.firmware.version AS firmware, COUNT() AS n FROM devices WHERE tags.fleet = 'demo' GROUP BY properties.reported.firmware.version ORDER BY properties.reported.firmware.version"

echo
echo "== configure 5/5: a declarative configuration keeps eco mode on the group eu-th100, devices that join later included"
"$ff" config apply eco --group eu-th100 --priority 10 --set-desired '{"mode": "eco"}' \
  --metric "on-new-firmware=SELECT * FROM devices WHERE properties.reported.firmware.version = '$good'" | sed 's/^/   /'
echo "   20 new devices join the group (provisioned now); the configuration picks them up by itself:"
late=$dir/creds-late-$run.ndjson
"$ff" provision --count 20 --prefix "demo-late$run-" --tags "region=eu,site=eu-site-1,model=th-100,fleet=demo" \
  --creds-out "$late" >/dev/null
cat "$late" >> "$creds"
"$ff" dev simulate -- --creds "$creds" --telemetry-every 30s --firmware-delay 200ms >/dev/null
for _ in $(seq 1 120); do
  n=$("$ff" devices query -o json "SELECT COUNT() AS n FROM devices WHERE STARTSWITH(deviceId, 'demo-late$run-') AND properties.reported.mode = 'eco'" 2>/dev/null | tr -dc '0-9')
  [ "${n:-0}" -ge 20 ] && break
  sleep 0.5
done
"$ff" config status eco | sed 's/^/   /'

echo
echo "== monitor 1/3: a FleetHealthCheck on a Temporal Schedule every minute"
"$ff" health schedule --every 1m --offline-after 10m
echo "   three devices go offline (the simulator restarts without them) ..."
flaky="demo-0010 demo-0020 demo-0030"
grep -v -E '"id":"(demo-0010|demo-0020|demo-0030)"' "$creds" > "$dir/creds-without-flaky.ndjson"
"$ff" dev simulate -- --creds "$dir/creds-without-flaky.ndjson" --telemetry-every 30s --firmware-delay 200ms >/dev/null
sleep 4
"$ff" health run --offline-after 3s
for d in $flaky; do "$ff" alerts list --open --device "$d" | tail -n +2; done
echo "   a health rule on a group, with limits and alerts of its own: the static group 'watched' holds the three"
if ! "$ff" group show watched >/dev/null 2>&1; then
  "$ff" group create watched --static >/dev/null
  "$ff" group add watched $flaky >/dev/null
fi
"$ff" health rule set watched-strict --group watched --offline-after 2s --every 1m | sed 's/^/   /'
"$ff" health run --rule watched-strict | sed 's/^/   /'
echo "   ... and come back: the next check resolves their alerts"
"$ff" dev simulate -- --creds "$creds" --telemetry-every 30s --firmware-delay 200ms >/dev/null
for _ in $(seq 1 60); do
  n=$("$ff" devices query -o json "SELECT COUNT() AS n FROM devices WHERE deviceId IN ('demo-0010', 'demo-0020', 'demo-0030') AND connectionState = 'connected'" | tr -dc '0-9')
  [ "${n:-0}" -ge 3 ] && break
  sleep 0.5
done
"$ff" health run --offline-after 3s
"$ff" health run --rule watched-strict >/dev/null
echo "   alerts of the three devices (the fleet-wide check's and the rule's), now resolved:"
for d in $flaky; do "$ff" alerts list --device "$d" | tail -n +2; done

echo
echo "== retire 1/2: demo-0999 is retired while connected: its session is dropped at once, its reconnect refused"
"$ff" retire demo-0999 --reason "demo: hardware fault"
"$ff" devices get demo-0999 | sed -n '1,3p'
grep '"id":"demo-0999"' "$creds" > "$dir/creds-retired.ndjson"
timeout 5 "$ff" simulate --creds "$dir/creds-retired.ndjson" --telemetry-every 0 --status-every 1h 2>&1 | grep -m1 -o 'refused=[0-9]*' | sed 's/^/   reconnect of demo-0999: /' || true

echo "== retire 2/2: demo-0998 is replaced by demo-r0998 (provisioned now; tags and desired copied)"
replacement=$dir/creds-r0998.ndjson
rm -f "$replacement"
if "$ff" devices get demo-r0998 >/dev/null 2>&1; then
  echo "   (demo-r0998 exists from an earlier run)"
else
  "$ff" replace demo-0998 demo-r0998 --creds-out "$replacement"
  cat "$replacement" >> "$creds"
fi
echo "   the simulator restarts with demo-r0998's credentials; the replacement connects:"
"$ff" dev simulate -- --creds "$creds" --telemetry-every 30s --firmware-delay 200ms >/dev/null
for _ in $(seq 1 60); do
  grep -q '^connection *connected' <<< "$("$ff" devices get demo-r0998)" && break
  sleep 0.5
done
"$ff" devices get demo-r0998 | sed -n '1,3p'
"$ff" twin get demo-r0998 | sed -n '/^tags/p'
"$ff" devices history demo-0998 --limit 4

echo "== enroll: five devices that were never provisioned register themselves on first contact"
# An enrollment group (zero-touch): the devices carry secrets derived from its key, no manifest, no
# per-device step; the first CONNECT of each is held while a RegisterDevice workflow registers it.
factory_key=$dir/factory.key
if ! "$ff" enroll show demo-factory >/dev/null 2>&1; then
  rm -f "$factory_key"
  "$ff" enroll create demo-factory --tags '{"fleet":"demo-enrolled","region":"eu"}' --desired '{"telemetryInterval":60}' \
    --max 100 --id-pattern 'factory-[0-9]{5}' --key-out "$factory_key" | sed -n 1p | sed 's/^/   /'
fi
"$ff" simulate --enroll-key-file "$factory_key" --enroll-ids factory- --devices 5 --telemetry-every 0 --status-every 1h >/dev/null 2>&1 &
enrolling=$!
for _ in $(seq 1 60); do
  n=$("$ff" devices query "SELECT COUNT() AS n FROM devices WHERE tags.fleet = 'demo-enrolled' AND connectionState = 'connected'" -o json | tr -dc '0-9')
  [ "${n:-0}" -ge 5 ] && break
  sleep 0.5
done
"$ff" devices query "SELECT deviceId, tags.region, properties.desired.telemetryInterval, connectionState FROM devices WHERE tags.fleet = 'demo-enrolled'"
"$ff" enroll list
kill "$enrolling" 2>/dev/null || true
wait "$enrolling" 2>/dev/null || true

echo
echo "== report"
"$ff" report
"$ff" report --html "$dir/report.html" >/dev/null
echo "   HTML report (opens offline in a browser): $dir/report.html"

echo
echo "== what happened"
result() { grep -m1 -E '^rollout rollout-[^ ]*: ' <<< "$1" | sed 's/^rollout //'; }
echo "   good firmware $good: $(result "$good_out")"
echo "   bad firmware  $bad: $(result "$bad_out")"
grep -E '^  · ' <<< "$bad_out" | sed 's/^/  /'
echo
ui=${FLEETFLOW_TEMPORAL_UI:-http://127.0.0.1:8233}
ns=${TEMPORAL_NAMESPACE:-default}
echo "Temporal UI, every operation of the demo: $ui/namespaces/$ns/workflows"
echo "  rollouts only: $ui/namespaces/$ns/workflows?query=FleetOp%3D%22rollout%22"
echo "The stack and the simulated devices keep running; try:"
echo "  bin/fleetflow devices get demo-0001"
echo "  bin/fleetflow twin get demo-0001"
echo "  bin/fleetflow rollout status rollout-$bad-1"
echo "  bin/fleetflow alerts list --open; bin/fleetflow health status; bin/fleetflow devices history demo-0999"
echo "  bin/fleetflow devices query \"SELECT * FROM devices WHERE tags.region = 'eu' AND properties.reported.model = 'th-100'\""
echo "  make down    # stops everything make demo started"
