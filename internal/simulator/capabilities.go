package simulator

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
)

var (
	models   = []string{"th-100", "th-200", "aq-300", "gw-400", "pm-500"}
	cpus     = []string{"cortex-m4", "cortex-m7", "esp32-s3", "rp2040", "cortex-a53"}
	sensors  = []string{"temperature", "humidity", "pressure", "co2", "pm25", "voc", "light", "motion"}
	radios   = []string{"wifi", "lte-m", "nb-iot", "ethernet"}
	revs     = []string{"A", "B", "C", "D"}
	fwMinors = 5
)

// Capabilities is what device id reports on its first connect. Values are derived from SHA-256(seed, id), so
// they are stable across runs, processes and Go versions. A device whose registry twin already holds
// reported.firmware or reported.health (a restarted simulation) keeps those and leaves them out of its
// report.
func Capabilities(id string, seed int64) map[string]any {
	h := hash(seed, id)
	model := models[int(h[0])%len(models)]
	var sens []any
	for i, name := range sensors {
		if i < 2 || h[1]&(1<<uint(i)) != 0 { // every device measures temperature and humidity
			sens = append(sens, name)
		}
	}
	return map[string]any{
		"model": model,
		"firmware": map[string]any{
			"version": fmt.Sprintf("1.%d.%d", int(h[2])%fwMinors, int(h[3])%10),
		},
		"health": map[string]any{"status": "ok"},
		"hardware": map[string]any{
			"rev":      revs[int(h[4])%len(revs)],
			"cpu":      cpus[int(h[5])%len(cpus)],
			"memoryKb": 256 << (int(h[6]) % 4),
		},
		"sensors": sens,
		"capabilities": map[string]any{
			"ota":                 true,
			"methods":             []any{"ping", "diagnostics", "reboot", "factoryReset"},
			"radio":               radios[int(h[7])%len(radios)],
			"telemetryMinSeconds": 5 * (1 + int(h[8])%6),
			"battery":             h[9]%2 == 0,
		},
	}
}

func hash(seed int64, id string) [32]byte {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(seed))
	return sha256.Sum256(append(b[:], id...))
}
