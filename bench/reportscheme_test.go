package bench

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/fleetflow/fleetflow/internal/creds"
)

// reportedScheme turns on the variant of the gateway benchmarks (BenchmarkGatewayConnect10k,
// BenchmarkConfigure10k) that runs with a realistic reported-properties schema in force, so that every
// reported patch is checked at ingest (FLEETFLOW_BENCH_REPORTED_SCHEME=1).
var reportedScheme = os.Getenv("FLEETFLOW_BENCH_REPORTED_SCHEME") == "1"

// benchReportedSchema describes everything the simulator reports (its capabilities, firmware and health, and
// the desired keys it mirrors), with the types, patterns, enums and bounds an operator of such a fleet would
// set; every patch of the benchmarks satisfies it, so each is checked in full.
const benchReportedSchema = `{"type":"object","properties":{
  "model":{"type":"string","pattern":"^[a-z]{2}-[0-9]{3}$"},
  "firmware":{"type":"object","properties":{"version":{"type":"string","pattern":"^[0-9]+\\.[0-9]+\\.[0-9]+$"}},"required":["version"]},
  "health":{"type":"object","properties":{"status":{"enum":["ok","failing"]},"reason":{"type":"string","maxLength":200}},"required":["status"]},
  "hardware":{"type":"object","properties":{"rev":{"enum":["A","B","C","D"]},"cpu":{"type":"string"},"memoryKb":{"type":"integer","minimum":1}}},
  "sensors":{"type":"array","items":{"type":"string"},"uniqueItems":true},
  "capabilities":{"$ref":"#/$defs/capabilities"},
  "telemetryInterval":{"type":"integer","minimum":1,"maximum":86400}},
  "$defs":{"capabilities":{"type":"object","properties":{
    "ota":{"type":"boolean"},"methods":{"type":"array","items":{"type":"string"}},
    "radio":{"enum":["wifi","lte-m","nb-iot","ethernet"]},"telemetryMinSeconds":{"type":"integer","minimum":1},
    "battery":{"type":"boolean"}},"required":["ota"]}}}`

// setReportedScheme sets benchReportedSchema (tags left free) through the CLI, as an operator would.
func setReportedScheme(b *testing.B, ctx context.Context, env []string) {
	b.Helper()
	dir := b.TempDir()
	tags, rep := filepath.Join(dir, "tags.json"), filepath.Join(dir, "reported.json")
	if err := os.WriteFile(tags, []byte(`{"type":"object"}`), 0o600); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(rep, []byte(benchReportedSchema), 0o600); err != nil {
		b.Fatal(err)
	}
	out := run(b, ctx, env, "scheme", "set", tags, "--reported", rep)
	if !strings.Contains(out, "is in force") {
		b.Fatalf("scheme set: %s", out)
	}
}

// requireReportedScheme checks, as device c with a bare paho client, that the gateway at url refuses a report
// that violates benchReportedSchema (so that the variant measures what it says), retrying while the gateway
// may still be reading the new scheme.
func requireReportedScheme(b *testing.B, url string, c creds.Credential) {
	b.Helper()
	cl := paho.NewClient(paho.NewClientOptions().AddBroker(url).SetClientID(c.ID).SetUsername(c.ID).SetPassword(c.Secret).
		SetProtocolVersion(4).SetAutoReconnect(false))
	connect(b, cl)
	defer cl.Disconnect(100)
	prefix := "devices/" + c.ID + "/twin/res/"
	got := make(chan string, 16)
	subscribe(b, cl, map[string]byte{prefix + "#": 1}, func(_ paho.Client, m paho.Message) {
		select {
		case got <- strings.TrimPrefix(m.Topic(), prefix):
		default:
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for i := 0; ; i++ {
		rid := "schemecheck" + strconv.Itoa(i)
		cl.Publish("devices/"+c.ID+"/twin/reported/"+rid, 1, false, []byte(`{"telemetryInterval":"often"}`))
		select {
		case res := <-got:
			if res == "400/"+rid {
				return
			}
		case <-time.After(5 * time.Second):
		}
		if time.Now().After(deadline) {
			b.Fatalf("the gateway does not enforce the reported schema")
		}
		time.Sleep(100 * time.Millisecond)
	}
}
