package config_test

import (
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/fleetflow/fleetflow/internal/config"
)

func TestDeviceChannelTLSSettings(t *testing.T) {
	for _, name := range []string{"FLEETFLOW_GATEWAY_TLS_LISTEN", "FLEETFLOW_TLS_CERT", "FLEETFLOW_TLS_KEY",
		"FLEETFLOW_GATEWAY_ALLOW_PLAINTEXT", "FLEETFLOW_MQTT_CA"} {
		t.Setenv(name, "")
	}
	cfg := config.FromEnv()
	assert.Equal(t, "127.0.0.1:8883", cfg.GatewayTLSListen)
	assert.Empty(t, cfg.TLSCert)
	assert.False(t, cfg.AllowPlaintext, "plaintext beyond loopback is opt-in")
	assert.Empty(t, cfg.MQTTCA)

	t.Setenv("FLEETFLOW_GATEWAY_TLS_LISTEN", "0.0.0.0:8883")
	t.Setenv("FLEETFLOW_TLS_CERT", "/etc/fleetflow/server.pem")
	t.Setenv("FLEETFLOW_TLS_KEY", "/etc/fleetflow/server-key.pem")
	t.Setenv("FLEETFLOW_GATEWAY_ALLOW_PLAINTEXT", "true")
	t.Setenv("FLEETFLOW_MQTT_CA", "/etc/fleetflow/ca.pem")
	cfg = config.FromEnv()
	assert.Equal(t, "0.0.0.0:8883", cfg.GatewayTLSListen)
	assert.Equal(t, "/etc/fleetflow/server.pem", cfg.TLSCert)
	assert.Equal(t, "/etc/fleetflow/server-key.pem", cfg.TLSKey)
	assert.True(t, cfg.AllowPlaintext)
	assert.Equal(t, "/etc/fleetflow/ca.pem", cfg.MQTTCA)

	t.Setenv("FLEETFLOW_GATEWAY_ALLOW_PLAINTEXT", "maybe")
	assert.False(t, config.FromEnv().AllowPlaintext, "anything but a boolean leaves the default")
}

func TestNATSSettings(t *testing.T) {
	t.Setenv("FLEETFLOW_NATS_URL", "")
	t.Setenv("FLEETFLOW_NATS_CA", "")
	cfg := config.FromEnv()
	assert.Equal(t, "nats://127.0.0.1:4222", cfg.NATSURL, "the local node by default")
	assert.Empty(t, cfg.NATSCA)

	t.Setenv("FLEETFLOW_NATS_URL", "tls://u:p@10.0.0.1:4222,tls://u:p@10.0.0.2:4222")
	t.Setenv("FLEETFLOW_NATS_CA", "/etc/fleetflow/nats-ca.pem")
	cfg = config.FromEnv()
	assert.Equal(t, "tls://u:p@10.0.0.1:4222,tls://u:p@10.0.0.2:4222", cfg.NATSURL)
	assert.Equal(t, "/etc/fleetflow/nats-ca.pem", cfg.NATSCA)
}
