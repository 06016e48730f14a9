package stack

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// natsStatus is one line per NATS node of ours, or one line for the cluster FLEETFLOW_NATS_URL names (or
// the stopped first node).
func (s *Stack) natsStatus() []PartStatus {
	var out []PartStatus
	for _, name := range s.numberedParts(partNATS) {
		st := s.partStatus(name, "", false)
		if p, _ := ReadPIDFile(s.pidPath(name)); p != nil && p.Cluster != "" && st.Health == HealthRunning {
			st.Note = "routes " + p.Cluster
		}
		out = append(out, st)
	}
	if len(out) > 0 {
		return out
	}
	urls := natsURLs(s.opts.NATSURL)
	addr := ""
	if len(urls) > 0 {
		addr, _ = natsHostPort(urls[0])
	}
	return []PartStatus{s.partStatus(partNATS, addr, s.opts.ExplicitNATS)}
}

// gatewayStatus is one line per gateway of ours with its connected devices, or one line for the broker
// FLEETFLOW_MQTT_URL names (or the stopped first gateway).
func (s *Stack) gatewayStatus(ctx context.Context) []PartStatus {
	var out []PartStatus
	if p, _ := ReadPIDFile(s.pidPath(PartGateway)); p != nil {
		// Started by a fleetflow from before numbered gateways; the next dev up or down adopts it as gateway-1.
		out = append(out, s.partStatus(PartGateway, "", false))
	}
	for _, name := range s.numberedParts(PartGateway) {
		out = append(out, s.partStatus(name, "", false))
	}
	if mqtt, err := mqttAddr(s.opts.Config.MQTTURL); err == nil && s.opts.ExplicitMQTT && !anyRunning(out) {
		return append(out, s.partStatus(PartGateway, mqtt, true))
	}
	if len(out) == 0 {
		return []PartStatus{s.partStatus(PartGateway, s.gatewayListen(), false)}
	}
	// Each running gateway's connected devices, from its metrics; read together, so a slow one costs its
	// timeout once.
	var wg sync.WaitGroup
	for i := range out {
		p, _ := ReadPIDFile(s.pidPath(out[i].Name))
		if out[i].Health != HealthRunning || p == nil || p.Metrics == "" {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if n, err := connectedDevices(ctx, p.Metrics); err == nil {
				out[i].Devices = &n
			}
		}()
	}
	wg.Wait()
	return out
}

func anyRunning(parts []PartStatus) bool {
	for _, p := range parts {
		if p.Health == HealthRunning {
			return true
		}
	}
	return false
}

// connectedDevicesMetric is the gateway's gauge of open device sessions.
const connectedDevicesMetric = "fleetflow_gateway_connected_devices"

// connectedDevices reads the number of connected devices from a gateway's /metrics.
func connectedDevices(ctx context.Context, addr string) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, fmt.Errorf("read metrics of %s: %w", addr, err)
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("read metrics of %s: %s", addr, resp.Status)
	}
	return parseGauge(bufio.NewScanner(resp.Body), connectedDevicesMetric)
}

// parseGauge finds the value of an unlabelled series in the Prometheus text format.
func parseGauge(sc *bufio.Scanner, name string) (int64, error) {
	for sc.Scan() {
		line := sc.Text()
		rest, ok := strings.CutPrefix(line, name)
		if !ok || !strings.HasPrefix(rest, " ") {
			continue
		}
		f, err := strconv.ParseFloat(strings.Fields(rest)[0], 64)
		if err != nil {
			return 0, fmt.Errorf("metric %s: %w", name, err)
		}
		return int64(f), nil
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("metric %s not found", name)
}
