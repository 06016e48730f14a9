package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	enumspb "go.temporal.io/api/enums/v1"

	"github.com/fleetflow/fleetflow/activities"
	"github.com/fleetflow/fleetflow/internal/channel"
	"github.com/fleetflow/fleetflow/internal/creds"
	"github.com/fleetflow/fleetflow/internal/device"
	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/fleetworker"
	"github.com/fleetflow/fleetflow/internal/simulator"
)

// Credential rotations against the real stack (Postgres, Temporal, the gateway, NATS, the simulator and the
// device SDK), started with `fleetflow credentials rotate`:
//
//   - the first one's worker is stopped once right after it sent the secrets and before it recorded anything
//     (a crash between two steps); its two connected simulated devices are rotated all the same: the registry
//     holds the digest of the secret the simulator appended to its credentials file, their newest session used
//     it, and the old slot is empty; a device that was never connected is reported offline and keeps its
//     secret; an unknown id is reported;
//   - the second one's device stores its new secret and is switched off for good before it reconnects: it is
//     waited for until the grace ends, then reported, and keeps both secrets;
//   - none of the new secrets appears in either workflow's Temporal history.
func TestCredentialRotation(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()

	ch, err := channel.Dial(ctx, channel.Config{URL: e.natsURL, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	require.NoError(t, err)
	t.Cleanup(ch.Close)
	acts := activities.New(e.reg, ch)
	var crashed atomic.Int64
	acts.Fault = func(point string) error {
		if point == activities.FaultInvoked && crashed.Add(1) == 1 {
			return fmt.Errorf("worker crashed after sending the secrets")
		}
		return nil
	}
	w := fleetworker.New(e.tc, e.taskQueue, acts)
	require.NoError(t, w.Start())
	t.Cleanup(w.Stop)

	path := filepath.Join(t.TempDir(), "rot.creds")
	_, err = e.cli(ctx, "provision", "--count", "4", "--prefix", "rot-", "--creds-out", path, "-o", "json")
	require.NoError(t, err)
	cs := mustCreds(t, path)
	require.Len(t, cs, 4)
	byID := map[string]creds.Credential{}
	for _, c := range cs {
		byID[c.ID] = c
	}
	e.simulate(ctx, cs[:2], simulator.Config{CredentialsFile: path})

	// The third device stores its new secret and is then switched off for good: it never dials again.
	var stored atomic.Bool
	dialer := &net.Dialer{Timeout: 5 * time.Second, Control: func(string, string, syscall.RawConn) error {
		if stored.Load() {
			return errors.New("switched off")
		}
		return nil
	}}
	dev, err := device.New(device.Config{BrokerURL: e.mqttURL, ID: cs[2].ID, Secret: cs[2].Secret, Dialer: dialer,
		Logger:          slog.New(slog.NewTextHandler(io.Discard, nil)),
		SaveCredentials: func(context.Context, device.Credentials) error { stored.Store(true); return nil }})
	require.NoError(t, err)
	require.NoError(t, dev.Connect(ctx))
	t.Cleanup(dev.Close)
	require.Eventually(t, func() bool {
		d, err := e.reg.GetDevice(ctx, cs[2].ID)
		return err == nil && d.Online
	}, 30*time.Second, 50*time.Millisecond)

	type result struct {
		ID         string   `json:"id"`
		State      string   `json:"state"`
		Rotated    int      `json:"rotated"`
		Unknown    []string `json:"unknown"`
		NotRotated []struct {
			DeviceID string `json:"deviceId"`
			State    string `json:"state"`
			Error    string `json:"error"`
		} `json:"notRotated"`
	}
	// The first rotation's worker crashes once between sending the secrets and recording the answers.
	out, err := e.cli(ctx, "credentials", "rotate", cs[0].ID, cs[1].ID, cs[3].ID, "rot-ghost", "--grace", "1m", "-o", "json")
	require.Equal(t, 2, exitCodeOf(err), "an unknown id is invalid input: %v\n%s", err, out)
	var res result
	require.NoError(t, json.Unmarshal([]byte(out), &res), out)
	assert.Equal(t, string(fleet.JobCompletedWithFailures), res.State)
	assert.Equal(t, 2, res.Rotated)
	assert.Equal(t, []string{"rot-ghost"}, res.Unknown)
	require.Len(t, res.NotRotated, 1)
	assert.Equal(t, cs[3].ID, res.NotRotated[0].DeviceID)
	assert.Equal(t, string(fleet.JobOffline), res.NotRotated[0].State)
	assert.GreaterOrEqual(t, crashed.Load(), int64(2), "the first attempt crashed and a retry went on")

	// The second one waits for the switched-off device until the grace ends, then reports it.
	t0 := time.Now()
	out, err = e.cli(ctx, "credentials", "rotate", cs[2].ID, "--grace", "15s", "-o", "json")
	require.Equal(t, 3, exitCodeOf(err), "a device not rotated is a per-device failure: %v\n%s", err, out)
	var missed result
	require.NoError(t, json.Unmarshal([]byte(out), &missed), out)
	assert.GreaterOrEqual(t, time.Since(t0), 15*time.Second, "the device got its whole grace")
	assert.True(t, stored.Load(), "the device stored its new secret")
	require.Len(t, missed.NotRotated, 1)
	assert.Equal(t, string(fleet.JobTimedOut), missed.NotRotated[0].State)
	assert.Equal(t, fleet.RotateMissed, missed.NotRotated[0].Error)

	// The fleet's view names the device that missed its newest rotation; a dry run counts targets per kind.
	out, err = e.cli(ctx, "credentials", "status", "-o", "json")
	require.NoError(t, err, out)
	var overview struct {
		Kinds []struct {
			Kind     string `json:"kind"`
			Devices  int64  `json:"devices"`
			NoExpiry int64  `json:"noExpiry"`
		} `json:"kinds"`
		Missed        int64 `json:"missed"`
		MissedDevices []struct {
			DeviceID   string `json:"deviceId"`
			RotationID string `json:"rotationId"`
		} `json:"missedDevices"`
	}
	require.NoError(t, json.Unmarshal([]byte(out), &overview), out)
	require.Len(t, overview.Kinds, 2)
	assert.Equal(t, "secret", overview.Kinds[0].Kind)
	assert.Equal(t, int64(4), overview.Kinds[0].Devices)
	assert.Equal(t, int64(4), overview.Kinds[0].NoExpiry, "provisioned without --credential-validity")
	assert.Equal(t, int64(1), overview.Missed)
	require.Len(t, overview.MissedDevices, 1)
	assert.Equal(t, cs[2].ID, overview.MissedDevices[0].DeviceID)
	assert.Equal(t, missed.ID, overview.MissedDevices[0].RotationID)
	text, err := e.cli(ctx, "credentials", "status")
	require.NoError(t, err, text)
	assert.Contains(t, text, "1 devices missed their newest credential rotation")
	out, err = e.cli(ctx, "credentials", "rotate", cs[0].ID, cs[1].ID, "rot-ghost", "--dry-run", "-o", "json")
	require.NoError(t, err, out)
	assert.JSONEq(t, `{"query": "ids: `+cs[0].ID+" "+cs[1].ID+` rot-ghost", "selected": 3, "secrets": 2, "certificates": 0, "notActive": 1}`, out)

	// The simulator's file holds the devices' new secrets; the registry the same digests.
	now := mustCreds(t, path)
	var secrets []string
	for _, c := range now[:2] {
		require.Equal(t, 2, c.Slot, "%s presents slot 2", c.ID)
		require.NotEmpty(t, c.Secret2)
		require.Equal(t, byID[c.ID].Secret, c.Secret, "%s keeps slot 1's secret on its side", c.ID)
		secrets = append(secrets, c.Secret2)
		var s1, s2, auth []byte
		var slot int
		require.NoError(t, e.reg.Pool().QueryRow(ctx, "SELECT secret1_hash, secret2_hash, auth_digest, auth_slot FROM devices WHERE id = $1", c.ID).
			Scan(&s1, &s2, &auth, &slot))
		assert.Nil(t, s1, "%s: the old secret is revoked", c.ID)
		assert.Equal(t, creds.Digest(c.Secret2), s2, "%s", c.ID)
		assert.Equal(t, s2, auth, "%s connected with it", c.ID)
		assert.Equal(t, 2, slot)
		hist, err := e.cli(ctx, "devices", "history", c.ID)
		require.NoError(t, err)
		assert.Contains(t, hist, "credentials rotated by "+res.ID)
	}
	for _, id := range []string{cs[2].ID, cs[3].ID} {
		var s1, s2 []byte
		require.NoError(t, e.reg.Pool().QueryRow(ctx, "SELECT secret1_hash, secret2_hash FROM devices WHERE id = $1", id).Scan(&s1, &s2))
		assert.Equal(t, creds.Digest(byID[id].Secret), s1, "%s keeps its secret", id)
		if id == cs[2].ID {
			assert.NotNil(t, s2, "%s may hold the new secret: both are kept", id)
		} else {
			assert.Nil(t, s2, "nothing reached %s: its new digest is cleared", id)
		}
	}

	// No secret in Temporal: every event of both workflows.
	var history bytes.Buffer
	for _, id := range []string{res.ID, missed.ID} {
		it := e.tc.GetWorkflowHistory(ctx, id, "", false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
		for it.HasNext() {
			ev, err := it.Next()
			require.NoError(t, err)
			// The text form prints payload bytes as quoted strings, printable characters as they are: a
			// secret (base64url) in any payload would appear verbatim.
			history.WriteString(ev.String())
		}
	}
	require.Positive(t, history.Len())
	for _, s := range secrets {
		assert.False(t, strings.Contains(history.String(), s), "a new secret is in the workflow's history")
	}
}

// An expired credential is refused at CONNECT, counted, and recorded on the device's timeline; the expiry was
// set by the provisioning workflow.
func TestExpiredCredentialRefused(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	e.startWorker()
	path := filepath.Join(t.TempDir(), "exp.creds")
	_, err := e.cli(ctx, "provision", "--count", "1", "--prefix", "exp-", "--creds-out", path, "--credential-validity", "30d", "-o", "json")
	require.NoError(t, err)
	c := mustCreds(t, path)[0]
	var expires time.Time
	require.NoError(t, e.reg.Pool().QueryRow(ctx, "SELECT credential_expires_at FROM devices WHERE id = $1", c.ID).Scan(&expires))
	assert.WithinDuration(t, time.Now().Add(30*24*time.Hour), expires, 5*time.Minute, "the workflow set the expiry")

	connect := func() error {
		d, err := device.New(device.Config{BrokerURL: e.mqttURL, ID: c.ID, Secret: c.Secret, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		require.NoError(t, err)
		defer d.Close()
		cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		defer cancel()
		return d.Connect(cctx)
	}
	require.NoError(t, connect())
	_, err = e.reg.Pool().Exec(ctx, "UPDATE devices SET credential_expires_at = now() - interval '1 minute' WHERE id = $1", c.ID)
	require.NoError(t, err)
	require.Eventually(t, func() bool { return errors.Is(connect(), device.ErrNotAuthorized) }, 30*time.Second, 200*time.Millisecond,
		"an expired credential is refused")
	assert.Positive(t, e.gw.Stats().AuthExpired)
	require.Eventually(t, func() bool {
		hist, err := e.cli(ctx, "devices", "history", c.ID)
		return err == nil && strings.Contains(hist, "connect refused: credentials expired")
	}, 30*time.Second, 500*time.Millisecond)
}
