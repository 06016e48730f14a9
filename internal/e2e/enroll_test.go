package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/stretchr/testify/require"
	"go.temporal.io/api/workflowservice/v1"

	"github.com/fleetflow/fleetflow/internal/enroll"
	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/pki"
	"github.com/fleetflow/fleetflow/internal/registry"
)

// gatewayProcess runs the fleetflow binary's gateway on free loopback ports (plaintext, and TLS with the
// test's certificate) with extra environment and returns its MQTT URLs; it stops when the test ends.
func (e *env) gatewayProcess(extraEnv ...string) (plain, tlsURL string) {
	e.t.Helper()
	cmd := exec.Command(bins.cli, "gateway", "--listen", "127.0.0.1:0", "--metrics-listen", "",
		"--tls-listen", "127.0.0.1:0", "--tls-cert", e.tls.Cert, "--tls-key", e.tls.Key)
	cmd.Env = append(e.environ(), extraEnv...)
	stdout, err := cmd.StdoutPipe()
	require.NoError(e.t, err)
	var logs syncBuffer
	cmd.Stderr = &logs
	require.NoError(e.t, cmd.Start())
	e.t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if e.t.Failed() {
			e.t.Logf("gateway log:\n%s", logs.String())
		}
	})
	addr := make(chan []string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		re := regexp.MustCompile(`gateway listening on (\S+) and, over TLS, on (\S+) `)
		for sc.Scan() {
			if m := re.FindStringSubmatch(sc.Text()); m != nil {
				addr <- m[1:]
			}
		}
	}()
	select {
	case a := <-addr:
		return "tcp://" + a[0], "ssl://" + a[1]
	case <-time.After(60 * time.Second):
		e.t.Fatalf("the gateway did not start:\n%s", logs.String())
		return "", ""
	}
}

// connectOnce makes one MQTT 3.1.1 CONNECT with a patient timeout (a first contact waits for its
// registration) and no retries, and returns the client or the CONNACK's refusal.
func connectOnce(t *testing.T, url, id, secret string) (paho.Client, error) {
	t.Helper()
	opts := paho.NewClientOptions().AddBroker(url).SetClientID(id).SetUsername(id).SetPassword(secret).
		SetProtocolVersion(4).SetAutoReconnect(false).SetConnectRetry(false).SetConnectTimeout(30 * time.Second)
	c := paho.NewClient(opts)
	tok := c.Connect()
	if !tok.WaitTimeout(40 * time.Second) {
		return nil, fmt.Errorf("connect of %s timed out", id)
	}
	if err := tok.Error(); err != nil {
		return nil, err
	}
	t.Cleanup(func() { c.Disconnect(50) })
	return c, nil
}

// TestZeroTouchEnrollment drives enrollment through the real binaries: the CLI creates groups, the gateway
// process verifies derived secrets and starts RegisterDevice on the Temporal server, the worker process
// registers the device, and the device is admitted with the group's tags and desired properties.
func TestZeroTouchEnrollment(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	master, err := enroll.NewKey()
	require.NoError(t, err)
	keyEnv := enroll.MasterKeyEnv + "=" + enroll.EncodeKey(master)
	e.workerProcess()
	url, _ := e.gatewayProcess(keyEnv)
	dir := t.TempDir()

	// The CLI needs the master key to seal the group key; without one it says how to get one.
	cmdNoKey := exec.CommandContext(ctx, bins.cli, "enroll", "create", "nokey")
	cmdNoKey.Env = append(e.environ(), enroll.MasterKeyEnv+"=", enroll.MasterKeyFileEnv+"=")
	cmdNoKey.Dir = dir
	out, err := cmdNoKey.CombinedOutput()
	require.Error(t, err)
	require.Contains(t, string(out), enroll.MasterKeyEnv)

	cli := func(args ...string) (string, error) {
		cmd := exec.CommandContext(ctx, bins.cli, args...)
		cmd.Env = append(e.environ(), keyEnv)
		cmd.Dir = dir
		var o, eb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &o, &eb
		err := cmd.Run()
		return o.String() + eb.String(), err
	}
	labKey := filepath.Join(dir, "lab.key")
	out2, err := cli("enroll", "create", "lab", "--tags", `{"site":"lab","floor":2}`, "--desired", `{"interval":30}`,
		"--max", "3", "--id-pattern", "lab-[0-9]+", "--key-out", labKey)
	require.NoError(t, err, out2)
	key, err := groupKeyFlag(labKey)
	require.NoError(t, err)
	// Bad input: a second group of the same name, an invalid pattern, tags that are not an object.
	out2, err = cli("enroll", "create", "lab")
	require.Error(t, err)
	require.Contains(t, out2, "exists")
	out2, err = cli("enroll", "create", "bad", "--id-pattern", "lab-[")
	require.Error(t, err)
	require.Contains(t, out2, "id pattern")
	out2, err = cli("enroll", "create", "bad", "--tags", `[1]`)
	require.Error(t, err)
	require.Contains(t, out2, "--tags")

	// `enroll secret` derives what the factory burns in, offline.
	out2, err = cli("enroll", "secret", "--key-file", labKey, "lab-1")
	require.NoError(t, err, out2)
	require.Equal(t, "lab-1 "+enroll.DeriveSecret(key, "lab-1"), strings.TrimSpace(out2))

	// First contact registers the device, which is then admitted. The gateway learns of the new group from
	// the registry's notice, which may trail the CLI by a moment: the device retries, as devices do.
	require.Eventually(t, func() bool {
		_, err := connectOnce(t, url, "lab-1", enroll.DeriveSecret(key, "lab-1"))
		return err == nil
	}, 30*time.Second, 200*time.Millisecond, "first contact with a derived secret")
	d, err := e.reg.GetDevice(ctx, "lab-1")
	require.NoError(t, err)
	require.Equal(t, "enrollment/lab", d.Provisioned)
	tw, err := e.reg.GetTwin(ctx, "lab-1")
	require.NoError(t, err)
	require.JSONEq(t, `{"site":"lab","floor":2}`, string(tw.Tags))
	var desired map[string]any
	require.NoError(t, json.Unmarshal(tw.Properties.Desired.Doc, &desired))
	require.EqualValues(t, 30, desired["interval"])
	hist, err := e.reg.DeviceHistory(ctx, "lab-1", 50)
	require.NoError(t, err)
	require.True(t, hasEvent(hist, registry.EventEnrolled), "the timeline records the registration: %+v", hist)
	// The registration is a workflow an operator finds in the Temporal UI, named after the device.
	require.Eventually(t, func() bool {
		resp, err := e.tc.ListWorkflow(ctx, &workflowservice.ListWorkflowExecutionsRequest{
			Query: fmt.Sprintf("WorkflowType = 'RegisterDevice' AND TaskQueue = '%s' AND ExecutionStatus = 'Completed'", e.taskQueue)})
		if err != nil || len(resp.Executions) == 0 {
			return false
		}
		return strings.HasPrefix(resp.Executions[len(resp.Executions)-1].Execution.WorkflowId, "register-lab-1-")
	}, 30*time.Second, 200*time.Millisecond, "a completed RegisterDevice run for lab-1")

	// A wrong secret, a derived secret for an id outside the pattern, and another group's secret are refused
	// and register nothing.
	_, err = connectOnce(t, url, "lab-2", enroll.DeriveSecret(key, "lab-9"))
	require.Error(t, err)
	_, err = connectOnce(t, url, "other-1", enroll.DeriveSecret(key, "other-1"))
	require.Error(t, err)
	for _, id := range []string{"lab-2", "other-1"} {
		_, err := e.reg.GetDevice(ctx, id)
		require.ErrorIs(t, err, fleet.ErrNotFound, id)
	}

	// The group registers at most 3 devices; a repeated first contact counts once.
	for _, id := range []string{"lab-2", "lab-3"} {
		_, err = connectOnce(t, url, id, enroll.DeriveSecret(key, id))
		require.NoError(t, err, id)
	}
	_, err = connectOnce(t, url, "lab-1", enroll.DeriveSecret(key, "lab-1"))
	require.NoError(t, err, "a registered device reconnects as any device")
	_, err = connectOnce(t, url, "lab-4", enroll.DeriveSecret(key, "lab-4"))
	require.Error(t, err, "the group is full")
	g, err := e.reg.EnrollmentGroup(ctx, "lab")
	require.NoError(t, err)
	require.EqualValues(t, 3, g.Registered)
	require.EqualValues(t, 1, g.Refused, "lab-4 refused by the cap")
	out2, err = cli("enroll", "list")
	require.NoError(t, err, out2)
	require.Regexp(t, `(?m)^lab\s+symmetric\s+enabled\s+3\s+1\s+3\s+lab-\[0-9\]\+`, out2)

	// Disabling stops registrations at once; enabling lets them through again.
	out2, err = cli("enroll", "create", "line-b", "--key-out", filepath.Join(dir, "b.key"))
	require.NoError(t, err, out2)
	bKey, err := groupKeyFlag(filepath.Join(dir, "b.key"))
	require.NoError(t, err)
	out2, err = cli("enroll", "disable", "line-b")
	require.NoError(t, err, out2)
	_, err = connectOnce(t, url, "b-1", enroll.DeriveSecret(bKey, "b-1"))
	require.Error(t, err, "a disabled group registers nobody")
	out2, err = cli("enroll", "enable", "line-b")
	require.NoError(t, err, out2)
	require.Eventually(t, func() bool {
		_, err := connectOnce(t, url, "b-1", enroll.DeriveSecret(bKey, "b-1"))
		return err == nil
	}, 30*time.Second, 500*time.Millisecond, "b-1 registers once line-b is enabled again")

	// A retired device does not come back through enrollment.
	out2, err = cli("retire", "lab-2")
	require.NoError(t, err, out2)
	_, err = connectOnce(t, url, "lab-2", enroll.DeriveSecret(key, "lab-2"))
	require.Error(t, err, "a retired id stays retired")
}

// groupKeyFlag reads a group key file as the CLI wrote it.
func groupKeyFlag(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return enroll.ParseKey(string(b))
}

func hasEvent(h []registry.HistoryEntry, kind string) bool {
	for _, x := range h {
		if x.Kind == kind {
			return true
		}
	}
	return false
}

// connectTLS makes one MQTT 3.1.1 CONNECT over TLS presenting cert (nil: none), with no password.
func connectTLS(t *testing.T, url, caFile, id string, cert *tls.Certificate) (paho.Client, error) {
	t.Helper()
	roots, err := pki.CertPool(caFile)
	require.NoError(t, err)
	tc := &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	if cert != nil {
		tc.Certificates = []tls.Certificate{*cert}
	}
	opts := paho.NewClientOptions().AddBroker(url).SetClientID(id).SetUsername(id).SetTLSConfig(tc).
		SetProtocolVersion(4).SetAutoReconnect(false).SetConnectRetry(false).SetConnectTimeout(30 * time.Second)
	c := paho.NewClient(opts)
	tok := c.Connect()
	if !tok.WaitTimeout(40 * time.Second) {
		return nil, fmt.Errorf("connect of %s timed out", id)
	}
	if err := tok.Error(); err != nil {
		return nil, err
	}
	t.Cleanup(func() { c.Disconnect(50) })
	return c, nil
}

// TestZeroTouchEnrollmentWithCertificates: an x509 group registers devices whose client certificates its CA
// signed, keeping their fingerprints; certificates of another CA or naming another id register nothing.
func TestZeroTouchEnrollmentWithCertificates(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	master, err := enroll.NewKey()
	require.NoError(t, err)
	keyEnv := enroll.MasterKeyEnv + "=" + enroll.EncodeKey(master)
	e.workerProcess()
	_, tlsURL := e.gatewayProcess(keyEnv)
	dir := t.TempDir()
	now := time.Now()
	factory, _, err := pki.NewCA("factory line 3", now, 24*time.Hour)
	require.NoError(t, err)
	stranger, _, err := pki.NewCA("someone else", now, 24*time.Hour)
	require.NoError(t, err)
	caFile := filepath.Join(dir, "factory-ca.pem")
	require.NoError(t, os.WriteFile(caFile, factory.PEM, 0o644))

	cmd := exec.CommandContext(ctx, bins.cli, "enroll", "create", "line3", "--ca", caFile, "--tags", `{"line":3}`)
	cmd.Env, cmd.Dir = append(e.environ(), keyEnv), dir
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
	// A file that is not a CA is refused with the reason.
	leaf, err := factory.IssueDevice("not-a-ca", now, time.Hour)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "leaf.pem"), leaf.CertPEM, 0o644))
	cmd = exec.CommandContext(ctx, bins.cli, "enroll", "create", "bad", "--ca", filepath.Join(dir, "leaf.pem"))
	cmd.Env, cmd.Dir = append(e.environ(), keyEnv), dir
	out, err = cmd.CombinedOutput()
	require.Error(t, err)
	require.Contains(t, string(out), "not a CA")

	issue := func(ca *pki.CA, id string) (*tls.Certificate, []byte) {
		dc, err := ca.IssueDevice(id, now, time.Hour)
		require.NoError(t, err)
		pair, err := tls.X509KeyPair(dc.CertPEM, dc.KeyPEM)
		require.NoError(t, err)
		return &pair, dc.Fingerprint
	}
	cert, fp := issue(factory, "meter-1")
	require.Eventually(t, func() bool { // once the gateway has read the new group (see above)
		_, err := connectTLS(t, tlsURL, e.tls.CA, "meter-1", cert)
		return err == nil
	}, 30*time.Second, 200*time.Millisecond, "first contact with a certificate of the group's CA")
	a, err := e.reg.DeviceAuth(ctx, "meter-1")
	require.NoError(t, err)
	require.Equal(t, fp, a.CertFingerprint, "the registry keeps the certificate's fingerprint")
	require.Empty(t, a.Secret1Hash)
	tw, err := e.reg.GetTwin(ctx, "meter-1")
	require.NoError(t, err)
	require.JSONEq(t, `{"line":3}`, string(tw.Tags))

	// Another CA's certificate, and the group CA's certificate for another id, register nothing.
	other, _ := issue(stranger, "meter-2")
	_, err = connectTLS(t, tlsURL, e.tls.CA, "meter-2", other)
	require.Error(t, err)
	wrongName, _ := issue(factory, "meter-3")
	_, err = connectTLS(t, tlsURL, e.tls.CA, "meter-4", wrongName)
	require.Error(t, err)
	for _, id := range []string{"meter-2", "meter-3", "meter-4"} {
		_, err := e.reg.GetDevice(ctx, id)
		require.ErrorIs(t, err, fleet.ErrNotFound, id)
	}
	// The registered device comes back with its certificate; a second certificate for its id does not
	// take it over.
	_, err = connectTLS(t, tlsURL, e.tls.CA, "meter-1", cert)
	require.NoError(t, err)
	again, _ := issue(factory, "meter-1")
	_, err = connectTLS(t, tlsURL, e.tls.CA, "meter-1", again)
	require.Error(t, err, "a device is its registered certificate, not any certificate the CA signs for its id")
}
