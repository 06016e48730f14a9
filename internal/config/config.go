// Package config holds the settings every fleetflow process shares, read from the environment with working
// local defaults, so that a fresh checkout runs without any configuration and production only sets variables.
package config

import (
	"os"
	"strconv"
)

// Defaults for the local stack started by `fleetflow dev up`. The Postgres port is not 5432 so that the
// project-local cluster never collides with a system Postgres.
const (
	DefaultDatabaseURL     = "postgres://fleetflow@127.0.0.1:15432/fleetflow?sslmode=disable"
	DefaultTemporalAddress = "127.0.0.1:7233"
	DefaultNamespace       = "default"
	DefaultMQTTURL         = "tcp://127.0.0.1:1883"
	DefaultNATSURL         = "nats://127.0.0.1:4222"
	DefaultGatewayListen   = "127.0.0.1:1883"
	DefaultGatewayTLS      = "127.0.0.1:8883"
	DefaultTaskQueue       = "fleetflow"
	DefaultTemporalUI      = "http://127.0.0.1:8233"
)

// Config is the union of what the CLI, the worker and the gateway need; each reads only its part.
type Config struct {
	DatabaseURL     string // FLEETFLOW_DATABASE_URL
	TemporalAddress string // TEMPORAL_ADDRESS, else the temporal.toml profile's (see TemporalClientOptions)
	Namespace       string // TEMPORAL_NAMESPACE, else the temporal.toml profile's
	// TemporalProfile is the temporal.toml profile that FromEnv found (TEMPORAL_PROFILE, else "default" when
	// the file has one); empty when none. Its address counts as chosen by the user, like TEMPORAL_ADDRESS.
	TemporalProfile string
	TaskQueue       string // FLEETFLOW_TASK_QUEUE
	MQTTURL         string // FLEETFLOW_MQTT_URL: where devices reach the gateway
	// NATSURL lists the NATS servers, comma-separated, through which workers and the CLI reach devices and
	// gateways relay to them (FLEETFLOW_NATS_URL); nats:// or tls://, credentials as user:password@.
	NATSURL string
	// NATSCA is the CA file that tls:// NATS servers are verified with (FLEETFLOW_NATS_CA); empty means the
	// system's roots.
	NATSCA        string
	GatewayListen string // FLEETFLOW_GATEWAY_LISTEN: where the embedded gateway listens (plaintext)
	// GatewayTLSListen is where the gateway listens for MQTT over TLS when it has a certificate
	// (FLEETFLOW_GATEWAY_TLS_LISTEN).
	GatewayTLSListen string
	// TLSCert and TLSKey are the gateway's certificate and key files (FLEETFLOW_TLS_CERT, FLEETFLOW_TLS_KEY);
	// without them the gateway has no TLS listener.
	TLSCert, TLSKey string
	// DeviceCA is the fleet CA file whose device client certificates the gateway accepts
	// (FLEETFLOW_DEVICE_CA; docs/architecture.md, "Device certificates").
	DeviceCA string
	// AllowPlaintext lets the gateway's plaintext listener bind a non-loopback address
	// (FLEETFLOW_GATEWAY_ALLOW_PLAINTEXT).
	AllowPlaintext bool
	// MQTTCA is the CA file clients verify the gateway with on a TLS MQTTURL (FLEETFLOW_MQTT_CA); empty means
	// the system's roots.
	MQTTCA        string
	TemporalUI    string // FLEETFLOW_TEMPORAL_UI: base URL printed in links
	MetricsListen string // FLEETFLOW_METRICS_LISTEN: optional /metrics listener

	// DatabaseListenURL is the URL of the gateway's and the worker's LISTEN connection (device changes,
	// configuration wake-ups), for when DatabaseURL goes through a
	// transaction-mode pooler (FLEETFLOW_DATABASE_LISTEN_URL); empty means DatabaseURL.
	DatabaseListenURL string
}

// FromEnv reads the configuration from the environment, falling back to the local defaults.
func FromEnv() Config {
	address, namespace, profile := temporalAddress()
	return Config{
		DatabaseURL:      Env("FLEETFLOW_DATABASE_URL", DefaultDatabaseURL),
		TemporalAddress:  address,
		Namespace:        namespace,
		TemporalProfile:  profile,
		TaskQueue:        Env("FLEETFLOW_TASK_QUEUE", DefaultTaskQueue),
		MQTTURL:          Env("FLEETFLOW_MQTT_URL", DefaultMQTTURL),
		NATSURL:          Env("FLEETFLOW_NATS_URL", DefaultNATSURL),
		NATSCA:           os.Getenv("FLEETFLOW_NATS_CA"),
		GatewayListen:    Env("FLEETFLOW_GATEWAY_LISTEN", DefaultGatewayListen),
		GatewayTLSListen: Env("FLEETFLOW_GATEWAY_TLS_LISTEN", DefaultGatewayTLS),
		TLSCert:          os.Getenv("FLEETFLOW_TLS_CERT"),
		TLSKey:           os.Getenv("FLEETFLOW_TLS_KEY"),
		DeviceCA:         os.Getenv("FLEETFLOW_DEVICE_CA"),
		AllowPlaintext:   EnvBool("FLEETFLOW_GATEWAY_ALLOW_PLAINTEXT", false),
		MQTTCA:           os.Getenv("FLEETFLOW_MQTT_CA"),
		TemporalUI:       Env("FLEETFLOW_TEMPORAL_UI", DefaultTemporalUI),
		MetricsListen:    Env("FLEETFLOW_METRICS_LISTEN", ""),

		DatabaseListenURL: os.Getenv("FLEETFLOW_DATABASE_LISTEN_URL"),
	}
}

// Env returns the variable's value, or def when it is unset or empty.
func Env(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// EnvBool returns the variable as a bool (1, t, true, 0, f, false, ...), or def when it is unset or not one.
func EnvBool(name string, def bool) bool {
	if v, err := strconv.ParseBool(os.Getenv(name)); err == nil {
		return v
	}
	return def
}

// EnvInt returns the variable as an int, or def when it is unset or not a number.
func EnvInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil {
		return v
	}
	return def
}
