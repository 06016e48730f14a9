package main

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Inside a checkout whose stack made a CA, an ssl:// URL is verified with it unless --mqtt-ca says otherwise;
// a tcp:// URL needs none.
func TestMQTTCAFallsBackToTheLocalStack(t *testing.T) {
	root := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(root, "go.mod"), []byte("module scratch\n"), 0o644))
	t.Chdir(root)
	g := &globals{}
	g.cfg.MQTTURL = "ssl://127.0.0.1:8883"
	assert.Empty(t, mqttCA(g), "no CA made yet: the system's roots")

	ca := filepath.Join(root, ".fleetflow", "tls", "ca.pem")
	require.NoError(t, os.MkdirAll(filepath.Dir(ca), 0o700))
	require.NoError(t, os.WriteFile(ca, []byte("pem"), 0o644))
	assert.Equal(t, ca, mqttCA(g))

	g.cfg.MQTTCA = "/etc/fleetflow/ca.pem"
	assert.Equal(t, "/etc/fleetflow/ca.pem", mqttCA(g), "an explicit CA wins")
	g.cfg.MQTTCA, g.cfg.MQTTURL = "", "tcp://127.0.0.1:1883"
	assert.Empty(t, mqttCA(g), "plaintext: no CA")
}
