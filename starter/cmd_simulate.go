package main

import (
	"errors"
	"fmt"
	"os"
	"runtime/debug"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/fleetflow/fleetflow/internal/creds"
	"github.com/fleetflow/fleetflow/internal/enroll"
	"github.com/fleetflow/fleetflow/internal/pki"
	"github.com/fleetflow/fleetflow/internal/simulator"
)

func newSimulateCmd(g *globals) *cobra.Command {
	var (
		credsFile   string
		enrollKey   string
		enrollFile  string
		enrollIDs   string
		cfg         simulator.Config
		statusEvery time.Duration
		brokers     []string
		pprofAddr   string
		gcPercent   int
		memPerDev   int
	)
	cmd := &cobra.Command{
		Use:   "simulate (--creds FILE | --enroll-key-file F --enroll-ids P --devices N)",
		Short: "Run simulated devices from a credentials file until interrupted",
		Long: `Connect the devices of a credentials file (written by "fleetflow provision") to the gateway, as real
devices would: each reports its capabilities (model, firmware, hardware, sensors, health) after its first
connect, sends telemetry periodically, acknowledges desired-state changes by reporting the new values back,
and answers the methods "ping", "diagnostics" and "reboot". A status line is printed periodically and a
summary at the end (Ctrl-C to stop).

Firmware updates (desired.firmware = {jobId, version, url, sha256}) are performed: the device reports
downloading, installing and rebooting on devices/{id}/jobs/{jobId}/status, each step taking
--firmware-delay, then reported.firmware.version and health, then succeeded. To rehearse a bad release,
--fail-install 2.0.0=0.1 makes one device in ten fail to install 2.0.0 (it keeps its old version), and
--unhealthy 2.0.0=0.05 makes one in twenty report failing health after updating; both may be repeated
for several versions, and the same devices are chosen on every run with the same --seed. Devices keep the
firmware version and health the registry holds for them across restarts of the simulator.

With an ssl:// (tls://, mqtts://) --mqtt-url the devices connect over TLS and verify the gateway's
certificate against --ca-file (the local stack's is .fleetflow/tls/ca.pem), or the system's roots.

--mqtt-url may name several gateways of the fleet (comma-separated, or the flag repeated; so may
FLEETFLOW_MQTT_URL): the devices are spread over them round-robin, and a device whose gateway goes away
reconnects to another one of the list, as devices behind a TCP load balancer would. "fleetflow dev
simulate" passes every gateway of the local stack.

Devices that enroll themselves (` + "`fleetflow enroll --help`" + `): with --enroll-key or --enroll-key-file (a group
key) instead of --creds, --devices N devices named --enroll-ids followed by a number (e.g. lab-00000 …)
connect with the secret derived from the key, unknown to the registry until their first contact
registers them.

One process handles about 10,000 devices; beyond ~28,000 per broker address, pass --source-ips so that
connections spread over several loopback addresses.`,
		Example: `  fleetflow simulate --creds sim.creds.ndjson
  fleetflow simulate --creds sim.creds.ndjson --devices 100 --telemetry-every 10s
  fleetflow simulate --creds sim.creds.ndjson --mqtt-url ssl://127.0.0.1:8883 --ca-file .fleetflow/tls/ca.pem
  fleetflow simulate --creds sim.creds.ndjson --mqtt-url tcp://127.0.0.1:1883,tcp://127.0.0.1:1884
  fleetflow simulate --creds sim.creds.ndjson --firmware-delay 5s --fail-install 2.0.0=0.1 --unhealthy 2.0.0=0.05`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			enrolling := enrollKey != "" || enrollFile != ""
			if credsFile == "" && !enrolling {
				return errors.New("--creds is required (or --enroll-key-file with --enroll-ids and --devices)")
			}
			if credsFile != "" && enrolling {
				return asUsage(errors.New("give --creds or an enrollment key, not both"))
			}
			if statusEvery <= 0 {
				statusEvery = 5 * time.Second
			}
			var list []creds.Credential
			var err error
			if enrolling {
				list, err = enrollingDevices(enrollKey, enrollFile, enrollIDs, cfg.Devices)
			} else {
				list, err = creds.ReadFile(credsFile)
			}
			if err != nil {
				return err
			}
			cfg.BrokerURLs, cfg.CAFile = brokerList(brokers), simulateCA(g, brokers)
			if len(cfg.BrokerURLs) == 0 {
				return errors.New("--mqtt-url is empty")
			}
			cfg.Creds, cfg.CredentialsFile = list, credsFile
			servePprof(pprofAddr)
			setSimulatorGC(gcPercent, cmd.Flags().Changed("gc-percent"))
			sim, err := simulator.New(cfg)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			n := len(list)
			if cfg.Devices > 0 && cfg.Devices < n {
				n = cfg.Devices
			}
			setSimulatorMemoryLimit(n, memPerDev, cmd.Flags().Changed("memory-per-device"))
			fmt.Fprintf(out, "simulating %d devices against %s (Ctrl-C to stop)\n", n, strings.Join(cfg.BrokerURLs, ", "))

			ctx := cmd.Context()
			done := make(chan error, 1)
			start := time.Now()
			go func() { done <- sim.Run(ctx) }()
			t := time.NewTicker(statusEvery)
			defer t.Stop()
			for {
				select {
				case <-t.C:
					fmt.Fprintf(out, "%s  %s\n", time.Since(start).Round(time.Second), sim.Stats())
				case err := <-done:
					st := sim.Stats()
					fmt.Fprintf(out, "summary after %s: %s\n", time.Since(start).Round(time.Second), st)
					if err != nil {
						return err
					}
					if st.Refused > 0 {
						fmt.Fprintf(out, "%d devices were refused: not provisioned, disabled, retired or a wrong secret\n", st.Refused)
					}
					return nil
				}
			}
		},
	}
	f := cmd.Flags()
	// Shadows the global --mqtt-url with a list (cobra prefers a command's own flag of the same name).
	f.StringSliceVar(&brokers, "mqtt-url", brokerList([]string{g.cfg.MQTTURL}),
		"gateway URLs to spread the devices over, comma-separated or repeated, tcp:// or ssl:// (FLEETFLOW_MQTT_URL)")
	f.StringVar(&credsFile, "creds", "", "credentials file (NDJSON of {id, secret}) written by provisioning; new secrets and renewed certificates from credential rotations are appended to it")
	f.StringVar(&enrollKey, "enroll-key", "", "an enrollment group's key: devices derive their secrets from it and register on first contact")
	f.StringVar(&enrollFile, "enroll-key-file", "", "file with an enrollment group's key (as `enroll create --key-out` wrote it)")
	f.StringVar(&enrollIDs, "enroll-ids", "sim-", "prefix of the ids of enrolling devices, followed by a 5-digit number")
	f.StringVar(&g.cfg.MQTTCA, "ca-file", g.cfg.MQTTCA, "CA file the devices verify the gateway with on an ssl:// --mqtt-url (FLEETFLOW_MQTT_CA, same as --mqtt-ca)")
	f.IntVar(&cfg.Devices, "devices", 0, "simulate only the first N devices of the file (0 = all)")
	f.IntVar(&cfg.Concurrency, "concurrency", 64, "CONNECTs in flight at once")
	f.Float64Var(&cfg.ConnectRate, "connect-rate", 0, "maximum CONNECTs per second (0 = no limit)")
	f.DurationVar(&cfg.TelemetryEvery, "telemetry-every", 30*time.Second, "telemetry period of each device (0 = none)")
	f.Int64Var(&cfg.Seed, "seed", 0, "varies the simulated capabilities (same seed, same values)")
	f.StringSliceVar(&cfg.LocalAddrs, "source-ips", nil, "source IPs to spread connections over, e.g. 127.0.0.2,127.0.0.3")
	f.DurationVar(&cfg.FirmwareStepDelay, "firmware-delay", 0, "how long each firmware update step (download, install, reboot) takes")
	f.Var(&cfg.FailInstall, "fail-install", "make a fraction of the devices fail to install a version, e.g. 2.0.0=0.1 (repeatable)")
	f.Var(&cfg.Unhealthy, "unhealthy", "make a fraction of the devices report failing health after updating to a version, e.g. 2.0.0=0.05 (repeatable)")
	f.DurationVar(&cfg.PingTimeout, "ping-timeout", 0, "how long each device waits for the gateway's PINGRESP before it reconnects (0 = the device SDK's 10 s); simulations of very large fleets on few cores starve their own devices, which then drop healthy connections")
	f.DurationVar(&cfg.ReconnectJitter, "reconnect-jitter", 0, "each device waits a random time below this before a reconnect attempt, so that the devices of a gateway that died do not all reconnect at once (0 = at once)")
	f.DurationVar(&statusEvery, "status-every", 5*time.Second, "how often to print a status line")
	f.IntVar(&gcPercent, "gc-percent", defaultSimulatorGCPercent, "the Go collector's GOGC for this process: less memory per device for more collector CPU (GOGC in the environment wins unless this flag is given; -1 turns the collector off)")
	f.IntVar(&memPerDev, "memory-per-device", defaultSimulatorKiBPerDevice, "a soft memory limit for the process, in KiB per simulated device on top of a fixed 32 MiB (0: none): the collector and the scavenger keep under it, collecting more often near it (58 keeps a simulator of 14,000 devices over TLS under 64 KiB per device; GOMEMLIMIT in the environment wins unless this flag is given)")
	f.StringVar(&pprofAddr, "pprof", "", "serve Go's profiler on this address (e.g. 127.0.0.1:6062)")
	_ = f.MarkHidden("pprof")
	return cmd
}

// defaultSimulatorGCPercent is the simulator's GOGC: Go's own. Half of it saves ~6 KiB per device over TLS
// once the fleet is connected (docs/benchmarks.md, "The simulator over TLS"), but collects twice as often
// exactly when devices connect or reconnect en masse, which cost 4–12% of the connect rate and is when a
// simulator sharing its cores with the servers is starved already (the failover's "Fourth pass"); a run that
// needs the memory more than the CPU says --gc-percent 50.
const defaultSimulatorGCPercent = 100

// setSimulatorGC sets the collector's percentage unless GOGC is set in the environment and the flag was not
// given, and reports whether it did.
func setSimulatorGC(percent int, flagGiven bool) bool {
	if os.Getenv("GOGC") != "" && !flagGiven {
		return false
	}
	debug.SetGCPercent(percent)
	return true
}

// defaultSimulatorKiBPerDevice is the simulator's memory budget per device by default: none (docs/architecture.md,
// "The simulator over TLS: memory per device"). At Go's GOGC 100 a simulator keeps, once its devices are
// connected, up to twice its live heap plus the connect storm's garbage (TLS handshakes) it has not returned;
// a budget makes the runtime return it and collect earlier near the budget, which costs CPU whenever the
// budget is below what the process would keep: 58 KiB over TLS at 14,286 devices per process (the
// 100,000-device benchmark's layout) keeps a simulator under 64 KiB per device, and the same budget made
// the single-gateway benchmark's method job (10,000 plaintext devices in one process) 13–20% slower
// (docs/benchmarks.md, "The simulator over TLS", second pass). A run that needs the memory says so.
const defaultSimulatorKiBPerDevice = 0

// simulatorFixedMemory is the part of the limit that does not grow with the devices: the binary, the
// credentials, the runtime.
const simulatorFixedMemory = 32 << 20

// setSimulatorMemoryLimit sets the process's soft memory limit for devices simulated devices of kib KiB each
// unless GOMEMLIMIT is set in the environment and the flag was not given, and returns the limit set (0: none).
func setSimulatorMemoryLimit(devices, kib int, flagGiven bool) int64 {
	if kib <= 0 || (os.Getenv("GOMEMLIMIT") != "" && !flagGiven) {
		return 0
	}
	limit := simulatorFixedMemory + int64(devices)*int64(kib)<<10
	debug.SetMemoryLimit(limit)
	return limit
}

// brokerList splits comma-separated URLs and drops empty entries and repeats.
func brokerList(in []string) []string {
	var out []string
	for _, item := range in {
		for _, u := range strings.Split(item, ",") {
			if u = strings.TrimSpace(u); u != "" && !slices.Contains(out, u) {
				out = append(out, u)
			}
		}
	}
	return out
}

// simulateCA is the CA file for the simulated devices: what mqttCA finds for the first TLS URL of the list
// (--ca-file, or the local stack's ca.pem).
func simulateCA(g *globals, brokers []string) string {
	list := brokerList(brokers)
	i := slices.IndexFunc(list, pki.IsTLSURL)
	if i < 0 {
		return g.cfg.MQTTCA
	}
	one := *g
	one.cfg.MQTTURL = list[i]
	return mqttCA(&one)
}

// enrollingDevices are n devices named prefix00000… whose secrets are derived from a group key, for devices
// that enroll themselves (docs/architecture.md, "Zero-touch enrollment").
func enrollingDevices(key, keyFile, prefix string, n int) ([]creds.Credential, error) {
	k, err := groupKeyFlag(key, keyFile)
	if err != nil {
		return nil, err
	}
	if n <= 0 {
		return nil, asUsage(errors.New("--devices N is required with an enrollment key"))
	}
	out := make([]creds.Credential, n)
	for i := range out {
		id := fmt.Sprintf("%s%05d", prefix, i)
		out[i] = creds.Credential{ID: id, Secret: enroll.DeriveSecret(k, id)}
	}
	return out, nil
}
