package main

import (
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/fleetflow/fleetflow/internal/channel"
	"github.com/fleetflow/fleetflow/internal/gateway"
	"github.com/fleetflow/fleetflow/internal/metrics"
	"github.com/fleetflow/fleetflow/internal/registry"
)

// gatewayStatsEvery is how often the foreground gateway logs its counters, so an operator watching the
// process sees load and refusals without a metrics stack.
const gatewayStatsEvery = time.Minute

// gatewayMetricsListen is the default of --metrics-listen: FLEETFLOW_GATEWAY_METRICS when set (set but empty
// turns metrics off, so the local stack and scripts can disable them without a flag), else 127.0.0.1:9464.
func gatewayMetricsListen() string {
	if v, ok := os.LookupEnv("FLEETFLOW_GATEWAY_METRICS"); ok {
		return v
	}
	return metrics.DefaultGatewayListen
}

func newGatewayCmd(g *globals) *cobra.Command {
	var pprofAddr string
	var failRate float64
	var failBurst int
	var admitPending int
	var admitLag, admitWait time.Duration
	metricsAddr := gatewayMetricsListen()
	cmd := &cobra.Command{
		Use:   "gateway",
		Short: "Run the device-facing MQTT gateway in the foreground",
		Long: `Run the embedded MQTT 3.1.1 broker that devices connect to. It authenticates every device against the
registry (client id = username = device id, password = the device's secret), confines each device to
devices/{id}/, drops a device's session as soon as it is disabled, retired or its secret is rotated away,
and writes connection state and reported properties to the registry in batches.

With --device-ca (the fleet CA of ` + "`fleetflow ca init`" + `, e.g. .fleetflow/ca/ca.pem) the TLS listener asks devices for a
client certificate: a device presenting one signed by that CA, whose subject is its id and whose fingerprint
the registry holds (` + "`fleetflow provision --auth x509`" + `), connects without a secret.

With --tls-cert and --tls-key it also serves MQTT over TLS (--tls-listen, default 127.0.0.1:8883); the
certificate and key are re-read when their files change, so a renewed certificate is served to new
connections without a restart (a pair that does not load is logged and the old one kept). The plaintext
listener carries secrets in clear, so it may bind only a loopback address unless --allow-plaintext says
the network is trusted.

Workers, the CLI and other gateways reach the devices connected here through NATS (--nats-url, a
comma-separated list; FLEETFLOW_NATS_URL): while a device is connected the gateway subscribes to its
subjects and relays desired patches and method calls to it, and a device connecting here ends its older
session on any other gateway. Any number of gateways can share one NATS cluster and one registry. The
gateway starts even when NATS is not reachable yet and connects as soon as it is.
The gateway learns of disabled, retired and re-keyed devices through Postgres' LISTEN, on a connection of
its own that must stay one server session: when --database-url goes through a transaction-mode pooler
(PgBouncer's pool_mode=transaction), give that connection a direct or session-mode URL with
--database-listen-url (FLEETFLOW_DATABASE_LISTEN_URL).
Prometheus metrics (connected devices, message counters, ingest batch latency) are served at
http://127.0.0.1:9464/metrics unless --metrics-listen says otherwise.
With an enrollment master key (FLEETFLOW_ENROLLMENT_KEY, or FLEETFLOW_ENROLLMENT_KEY_FILE naming a file
with it; ` + "`dev up`" + ` sets one) an unknown device whose secret is derived from an enabled enrollment group's key
is registered on first contact by a RegisterDevice workflow (on the Temporal server of TEMPORAL_ADDRESS)
and then admitted (` + "`fleetflow enroll --help`" + `).
The gateway stops on SIGINT or SIGTERM.`,
		Example: `  fleetflow gateway
  fleetflow gateway --nats-url nats://127.0.0.1:4222,nats://127.0.0.1:4223 --listen 127.0.0.1:1884 --tls-listen 127.0.0.1:8884
  FLEETFLOW_NATS_URL=tls://gw:secret@nats-1:4222,tls://gw:secret@nats-2:4222 FLEETFLOW_NATS_CA=/etc/fleetflow/ca.pem \
    fleetflow gateway --tls-listen :8883 --tls-cert /etc/fleetflow/server.pem --tls-key /etc/fleetflow/server-key.pem
  fleetflow gateway --listen 10.0.0.5:1883 --allow-plaintext --metrics-listen 127.0.0.1:9464`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			servePprof(pprofAddr)
			level := slog.LevelInfo
			if g.verbose {
				level = slog.LevelDebug
			}
			// A foreground server reports its lifecycle at Info, unlike the CLI's one-shot commands.
			log := slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: level}))
			gcfg := gateway.Config{Listen: g.cfg.GatewayListen, AllowPlaintext: g.cfg.AllowPlaintext,
				TLSListen: g.cfg.GatewayTLSListen, TLSCertFile: g.cfg.TLSCert, TLSKeyFile: g.cfg.TLSKey,
				DeviceCAFile: g.cfg.DeviceCA, AuthFailRate: failRate, AuthFailBurst: failBurst,
				AdmitPending: admitPending, AdmitLag: admitLag, AdmitWait: admitWait}
			// Refuse a plaintext listener on the network before connecting to anything, with the reason.
			if err := gcfg.Validate(); err != nil {
				return asUsage(err) // exit 2: the settings, not the environment, are wrong
			}
			var mreg *metrics.Registry
			if metricsAddr != "" {
				// Serve before the broker starts, so that a metrics port in use fails the start-up at once;
				// until then the gateway's series read zero.
				mreg = metrics.NewRegistry()
				metrics.RegisterProcess(mreg, "gateway")
				srv, err := metrics.Serve(metricsAddr, metrics.Handler(mreg), log)
				if err != nil {
					return fmt.Errorf("%w (choose another address with --metrics-listen or FLEETFLOW_GATEWAY_METRICS, or \"\" to disable)", err)
				}
				defer srv.Close()
				log.Info("serving metrics", "url", srv.URL())
			}
			// The registry's query latency and pool statistics are part of the gateway's metrics too: auth
			// lookups and ingest batches are its registry traffic.
			opts := registry.Options{ListenURL: g.cfg.DatabaseListenURL}
			if mreg != nil {
				opts.Tracer = metrics.NewQueryTracer(mreg)
			}
			reg, err := openRegistryWith(cmd.Context(), g, opts)
			if err != nil {
				return err
			}
			defer reg.Close()
			if mreg != nil {
				metrics.RegisterPool(mreg, reg.Pool())
			}
			gcfg.Metrics = mreg
			if g.cfg.NATSURL == "" {
				log.Warn("no NATS URL: workers and the CLI cannot reach the devices connected here")
			} else {
				relay, err := channel.DialRelay(channel.Config{URL: g.cfg.NATSURL, CAFile: natsCA(g), Name: "fleetflow-gateway", Logger: log})
				if err != nil {
					return err
				}
				defer relay.Close() // after the gateway's Close: its sessions detach first
				gcfg.Downlinks = relay
			}
			enr, registrar, err := enrollerFor(g, reg, log)
			if err != nil {
				return err
			}
			if enr != nil {
				defer registrar.Close()
				gcfg.Enroller = enr
				log.Info("zero-touch enrollment on: unknown devices with a secret derived from an enrollment group register on first contact")
			}
			gw := gateway.New(gcfg, reg, log)
			if err := gw.Start(ctx); err != nil {
				return err
			}
			if gw.TLSAddr() != "" {
				fmt.Fprintf(cmd.OutOrStdout(), "gateway listening on %s and, over TLS, on %s (Ctrl-C to stop)\n", gw.Addr(), gw.TLSAddr())
			} else {
				fmt.Fprintf(cmd.OutOrStdout(), "gateway listening on %s (Ctrl-C to stop)\n", gw.Addr())
			}
			t := time.NewTicker(gatewayStatsEvery)
			defer t.Stop()
			for {
				select {
				case <-t.C:
					st := gw.Stats()
					log.Info("gateway stats", "connected", st.Connected, "connects", st.Connects,
						"auth_failures", st.AuthFailures, "refused_busy", st.RefusedBusy, "acl_denials", st.ACLDenials, "kicks", st.Kicks, "takeovers", st.Takeovers,
						"desired_relayed", st.DesiredRelayed, "methods_relayed", st.MethodsRelayed,
						"messages_in", st.MessagesIn, "messages_out", st.MessagesOut, "slow_dropped", st.SlowDropped, "malformed", st.Malformed,
						"reported_applied", st.ReportedApplied, "reported_failed", st.ReportedFailed, "throttled", st.Throttled, "overdue", st.Overdue,
						"enrolled", st.Enrolled, "enroll_refused", st.EnrollRefused, "ingest_batches", st.IngestBatches,
						"last_batch_latency", st.LastBatchLatency, "store_errors", st.StoreErrors)
				case <-ctx.Done():
					if err := gw.Close(); err != nil {
						return fmt.Errorf("stop gateway: %w", err)
					}
					st := gw.Stats()
					fmt.Fprintf(cmd.OutOrStdout(), "gateway stopped: %d connects, %d refused, %d reported patches applied\n",
						st.Connects, st.AuthFailures, st.ReportedApplied)
					return nil
				}
			}
		},
	}
	cmd.Flags().StringVar(&g.cfg.GatewayListen, "listen", g.cfg.GatewayListen,
		"TCP address of the plaintext MQTT listener; loopback only unless --allow-plaintext (FLEETFLOW_GATEWAY_LISTEN)")
	cmd.Flags().BoolVar(&g.cfg.AllowPlaintext, "allow-plaintext", g.cfg.AllowPlaintext,
		"allow the plaintext listener on a non-loopback address (FLEETFLOW_GATEWAY_ALLOW_PLAINTEXT)")
	cmd.Flags().StringVar(&g.cfg.GatewayTLSListen, "tls-listen", g.cfg.GatewayTLSListen,
		"TCP address of the MQTT-over-TLS listener, opened when --tls-cert and --tls-key are given (FLEETFLOW_GATEWAY_TLS_LISTEN)")
	cmd.Flags().StringVar(&g.cfg.DeviceCA, "device-ca", g.cfg.DeviceCA, "fleet CA file whose device client certificates the TLS listener accepts (FLEETFLOW_DEVICE_CA)")
	cmd.Flags().StringVar(&g.cfg.TLSCert, "tls-cert", g.cfg.TLSCert, "PEM certificate (chain) of the TLS listener, reloaded when it changes (FLEETFLOW_TLS_CERT)")
	cmd.Flags().StringVar(&g.cfg.TLSKey, "tls-key", g.cfg.TLSKey, "PEM private key of --tls-cert (FLEETFLOW_TLS_KEY)")
	cmd.Flags().StringVar(&metricsAddr, "metrics-listen", metricsAddr,
		`serve Prometheus metrics at http://ADDR/metrics; "" disables (FLEETFLOW_GATEWAY_METRICS)`)
	cmd.Flags().Float64Var(&failRate, "auth-fail-rate", 10,
		"failed CONNECTs per second each remote IP address may make once its burst is used up; negative: no per-address limit (docs/architecture.md, \"Abuse: floods of CONNECTs\")")
	cmd.Flags().IntVar(&admitPending, "admit-pending", 256,
		"CONNECTs authenticated at once; more are refused \"server unavailable\" at once, and devices back off (negative: no bound)")
	cmd.Flags().DurationVar(&admitLag, "admit-lag", time.Second,
		"refuse CONNECTs \"server unavailable\" while the gateway's goroutines wait longer than this for a CPU (negative: never)")
	cmd.Flags().DurationVar(&admitWait, "admit-wait", 3*time.Second,
		"refuse a CONNECT \"server unavailable\" when its registry lookup takes longer than this (below the devices' 10 s CONNECT timeout)")
	cmd.Flags().IntVar(&failBurst, "auth-fail-burst", 50, "failed CONNECTs a remote IP address may make at once (raise it for many devices behind one NAT)")
	cmd.Flags().StringVar(&g.cfg.DatabaseListenURL, "database-listen-url", g.cfg.DatabaseListenURL,
		"Postgres URL of the connection that LISTENs for device changes, direct or session-mode, when --database-url goes through a transaction-mode pooler; default: --database-url (FLEETFLOW_DATABASE_LISTEN_URL)")
	// The default comes from the environment and holds a password: --help shows it masked.
	cmd.Flags().Lookup("database-listen-url").DefValue = channel.RedactURL(g.cfg.DatabaseListenURL)
	cmd.Flags().StringVar(&pprofAddr, "pprof", "", "serve Go's profiler on this address (e.g. 127.0.0.1:6060)")
	_ = cmd.Flags().MarkHidden("pprof")
	return cmd
}
