package registry_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/creds"
	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/query"
	"github.com/fleetflow/fleetflow/internal/registry"
	"github.com/fleetflow/fleetflow/internal/testenv"
	"github.com/fleetflow/fleetflow/internal/twin"
)

// open returns a registry on a fresh database of the package's throwaway cluster.
func open(t *testing.T) *registry.Registry {
	t.Helper()
	url := testenv.Postgres(t)
	reg, err := registry.Open(context.Background(), url)
	require.NoError(t, err)
	t.Cleanup(reg.Close)
	return reg
}

func stage(t *testing.T, reg *registry.Registry, op string, rows []registry.StagedRow) int64 {
	t.Helper()
	return stageAs(t, reg, op, rows, false)
}

// stageAs stages rows under op in one transaction into provision_rows (StageRows), or in chunks of 3 into
// the operation's own staging table (StageChunks).
func stageAs(t *testing.T, reg *registry.Registry, op string, rows []registry.StagedRow, chunked bool) int64 {
	t.Helper()
	i := 0
	next := func() (registry.StagedRow, bool, error) {
		if i == len(rows) {
			return registry.StagedRow{}, false, nil
		}
		r := rows[i]
		r.Seq = int64(i)
		if r.Line == 0 {
			r.Line = int64(i + 2)
		}
		if r.Tags == "" {
			r.Tags = "{}"
		}
		if r.SecretHash == nil && r.CertFingerprint == nil && r.ParseError == "" {
			r.SecretHash = creds.Digest("secret-" + r.ID)
		}
		i++
		return r, true, nil
	}
	var n int64
	var err error
	if chunked {
		n, err = reg.StageChunks(context.Background(), op, "provision", 3, next, registry.StageHooks{})
	} else {
		n, err = reg.StageRows(context.Background(), op, "provision", next)
	}
	require.NoError(t, err)
	return n
}

func TestMigrationsAreIdempotent(t *testing.T) {
	url := testenv.Postgres(t)
	for i := 0; i < 3; i++ {
		reg, err := registry.Open(context.Background(), url)
		require.NoError(t, err)
		reg.Close()
	}
}

func TestProvisionBatchReportsEveryRowAndIsIdempotent(t *testing.T) {
	for _, chunked := range []bool{false, true} {
		t.Run(fmt.Sprintf("chunked=%v", chunked), func(t *testing.T) { testProvisionBatchReportsEveryRow(t, chunked) })
	}
}

func testProvisionBatchReportsEveryRow(t *testing.T, chunked bool) {
	ctx := context.Background()
	reg := open(t)
	stage := func(t *testing.T, reg *registry.Registry, op string, rows []registry.StagedRow) int64 {
		return stageAs(t, reg, op, rows, chunked)
	}
	// A device that exists before the manifest runs keeps its credentials.
	stage(t, reg, "pre", []registry.StagedRow{{ID: "dev-existing", Tags: `{"region":"us"}`}})
	_, err := reg.ProvisionBatch(ctx, "pre", 0, 1, 0)
	require.NoError(t, err)

	rows := []registry.StagedRow{
		{ID: "dev-1", Tags: `{"region":"eu","site":"ber-1"}`}, // line 2
		{ID: "Bad ID", Tags: `{}`},                            // line 3: invalid id
		{ID: "dev-existing", Tags: `{"region":"eu"}`},         // line 4: exists
		{ID: "dev-2", Tags: `{"region":`},                     // line 5: bad tags JSON
		{ParseError: "expected 3 fields, found 2"},            // line 6
		{ID: "dev-3", Tags: `{"region":"eu"}`},                // line 7
		{ID: "dev-1", Tags: `{}`},                             // line 8: duplicate within the batch
		{ID: "dev-4", Tags: `{"region":"apac"}`},              // line 9: next batch
		{ID: "dev-3", Tags: `{}`},                             // line 10: duplicate across batches
	}
	n := stage(t, reg, "op", rows)
	require.Equal(t, int64(len(rows)), n)

	c1, err := reg.ProvisionBatch(ctx, "op", 0, 7, 0)
	require.NoError(t, err)
	require.Equal(t, fleet.ProvisionCounts{Created: 2, Existing: 1, Invalid: 4}, c1)
	again, err := reg.ProvisionBatch(ctx, "op", 0, 7, 0)
	require.NoError(t, err)
	require.Equal(t, c1, again, "a retried batch returns its recorded counts")
	c2, err := reg.ProvisionBatch(ctx, "op", 7, 9, 0)
	require.NoError(t, err)
	require.Equal(t, fleet.ProvisionCounts{Created: 1, Invalid: 1}, c2)

	total, err := reg.ProvisionCounts(ctx, "op")
	require.NoError(t, err)
	require.Equal(t, int64(len(rows)), total.Total())

	res, err := reg.ProvisionResults(ctx, "op", "", 100)
	require.NoError(t, err)
	byLine := map[int64]fleet.RowResult{}
	for _, r := range res {
		byLine[r.Line] = r
	}
	require.Len(t, byLine, 6)
	require.Contains(t, byLine[3].Reason, "invalid device id")
	require.Equal(t, fleet.RowExists, byLine[4].Outcome)
	require.Contains(t, byLine[5].Reason, "invalid JSON")
	require.Equal(t, "expected 3 fields, found 2", byLine[6].Reason)
	require.Contains(t, byLine[8].Reason, "duplicate id")
	require.Contains(t, byLine[10].Reason, "duplicate id")

	// The existing device kept its old secret; the new one has the staged digest and tags.
	a, err := reg.DeviceAuth(ctx, "dev-existing")
	require.NoError(t, err)
	require.True(t, creds.Matches("secret-dev-existing", a.Secret1Hash))
	tw, err := reg.GetTwin(ctx, "dev-existing")
	require.NoError(t, err)
	require.JSONEq(t, `{"region":"us"}`, string(tw.Tags))
	tw, err = reg.GetTwin(ctx, "dev-1")
	require.NoError(t, err)
	require.JSONEq(t, `{"region":"eu","site":"ber-1"}`, string(tw.Tags))
	created, err := reg.CreatedBy(ctx, "op")
	require.NoError(t, err)
	require.Equal(t, map[string]bool{"dev-1": true, "dev-3": true, "dev-4": true}, created)
	// Many twins in one read (the gateway's twin/get batches): the same twins, unknown ids left out.
	twins, err := reg.GetTwins(ctx, []string{"dev-existing", "dev-1", "no-such-device"})
	require.NoError(t, err)
	require.Len(t, twins, 2)
	require.JSONEq(t, `{"region":"us"}`, string(twins["dev-existing"].Tags))
	one, err := reg.GetTwin(ctx, "dev-1")
	require.NoError(t, err)
	require.Equal(t, one, twins["dev-1"])

	_, err = reg.OperationRows(ctx, "nope")
	require.ErrorIs(t, err, fleet.ErrOperationNotStaged)
	require.NoError(t, reg.DropStaging(ctx, "op"))
	left, err := reg.StagedLeft(ctx, "op")
	require.NoError(t, err)
	require.Zero(t, left)
}

// The devices a batch creates carry the operation's name and, when asked, their credentials' expiry; the
// devices that existed keep theirs. Both kinds of staging.
func TestProvisionBatchSetsProvisionedByAndExpiry(t *testing.T) {
	for _, chunked := range []bool{false, true} {
		t.Run(fmt.Sprintf("chunked=%v", chunked), func(t *testing.T) {
			ctx := context.Background()
			reg := open(t)
			stageAs(t, reg, "pre", []registry.StagedRow{{ID: "old-1"}}, chunked)
			_, err := reg.ProvisionBatch(ctx, "pre", 0, 1, 0)
			require.NoError(t, err)
			stageAs(t, reg, "op", []registry.StagedRow{{ID: "new-1", Tags: `{"a":"x\\ty"}`}, {ID: "old-1"},
				{ID: "new-2", CertFingerprint: creds.Digest("cert"), SecretHash: nil}, {ID: "new-3"}}, chunked)
			c, err := reg.ProvisionBatch(ctx, "op", 0, 4, 30*24*time.Hour)
			require.NoError(t, err)
			require.Equal(t, fleet.ProvisionCounts{Created: 3, Existing: 1}, c)
			rows, err := reg.Pool().Query(ctx, `SELECT id, coalesce(provisioned_by, ''), credential_expires_at IS NOT NULL,
				secret1_hash IS NOT NULL, cert_fingerprint IS NOT NULL, tags::text FROM devices ORDER BY id`)
			require.NoError(t, err)
			type dev struct {
				ID, By                string
				Expires, Secret, Cert bool
				Tags                  string
			}
			got, err := pgx.CollectRows(rows, pgx.RowToStructByPos[dev])
			require.NoError(t, err)
			require.Equal(t, []dev{
				{"new-1", "op", true, true, false, `{"a": "x\\ty"}`},
				{"new-2", "op", true, false, true, `{}`},
				{"new-3", "op", true, true, false, `{}`},
				{"old-1", "pre", false, true, false, `{}`},
			}, got)
			a, err := reg.DeviceAuth(ctx, "new-1")
			require.NoError(t, err)
			require.True(t, creds.Matches("secret-new-1", a.Secret1Hash), "the staged digest, byte for byte")
		})
	}
}

func provision(t *testing.T, reg *registry.Registry, op string, ids ...string) {
	t.Helper()
	var rows []registry.StagedRow
	for _, id := range ids {
		rows = append(rows, registry.StagedRow{ID: id})
	}
	stage(t, reg, op, rows)
	c, err := reg.ProvisionBatch(context.Background(), op, 0, int64(len(ids)), 0)
	require.NoError(t, err)
	require.Equal(t, int64(len(ids)), c.Created)
}

func TestConcurrentTwinWritersNeverLoseAnUpdate(t *testing.T) {
	ctx := context.Background()
	reg := open(t)
	provision(t, reg, "op", "dev-1")

	const writers = 20
	var wg sync.WaitGroup
	for i := 0; i < writers; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			_, err := reg.UpdateTwin(ctx, "dev-1", twin.Desired, []byte(fmt.Sprintf(`{"k%02d":%d}`, i, i)), "")
			require.NoError(t, err)
		}(i)
	}
	wg.Wait()
	tw, err := reg.GetTwin(ctx, "dev-1")
	require.NoError(t, err)
	var desired map[string]any
	require.NoError(t, json.Unmarshal(tw.Properties.Desired.Doc, &desired))
	require.Len(t, desired, writers)
	require.Equal(t, int64(1+writers), tw.Properties.Desired.Version)

	// Conditional writers racing on the same etag: exactly one wins, the others learn the current etag.
	etag := tw.ETag
	var wins, stale int
	var mu sync.Mutex
	for i := 0; i < 10; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			_, err := reg.UpdateTwin(ctx, "dev-1", twin.Tags, []byte(fmt.Sprintf(`{"owner":"w%d"}`, i)), etag)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				wins++
			case errors.Is(err, fleet.ErrPreconditionFailed):
				stale++
				require.Contains(t, err.Error(), "current etag")
			default:
				t.Errorf("unexpected error: %v", err)
			}
		}(i)
	}
	wg.Wait()
	require.Equal(t, 1, wins)
	require.Equal(t, 9, stale)

	_, err = reg.UpdateTwin(ctx, "dev-1", twin.Tags, []byte(`{"big":"`+string(make([]byte, 0))+`"}`), "")
	require.NoError(t, err)
	_, err = reg.UpdateTwin(ctx, "nope", twin.Tags, []byte(`{}`), "")
	require.ErrorIs(t, err, fleet.ErrNotFound)
	_, err = reg.UpdateTwin(ctx, "dev-1", twin.Reported, []byte(`{}`), "")
	require.Error(t, err, "operators cannot write reported")
}

func TestApplyReportedBatch(t *testing.T) {
	ctx := context.Background()
	reg := open(t)
	provision(t, reg, "op", "dev-1", "dev-2", "dev-off")
	require.NoError(t, reg.SetStatus(ctx, "dev-off", fleet.StatusDisabled))

	res, err := reg.ApplyReported(ctx, []fleet.ReportedPatch{
		{DeviceID: "dev-1", RequestID: "a", Patch: []byte(`{"model":"x1","firmware":{"version":"1.0.0"}}`)},
		{DeviceID: "dev-2", RequestID: "b", Patch: []byte(`{"model":"x2"}`)},
		{DeviceID: "dev-1", RequestID: "c", Patch: []byte(`{"firmware":{"version":"1.1.0"}}`)},
		{DeviceID: "dev-1", RequestID: "d", Patch: []byte(`not json`)},
		{DeviceID: "ghost", RequestID: "e", Patch: []byte(`{}`)},
		{DeviceID: "dev-off", RequestID: "f", Patch: []byte(`{"a":1}`)},
	})
	require.NoError(t, err)
	require.Len(t, res, 6)
	require.NoError(t, res[0].Err)
	require.Equal(t, int64(2), res[0].Version)
	require.Equal(t, int64(3), res[2].Version, "patches for one device apply in order")
	require.ErrorIs(t, res[3].Err, twin.ErrInvalidJSON)
	require.ErrorIs(t, res[4].Err, fleet.ErrNotFound)
	require.ErrorIs(t, res[5].Err, fleet.ErrNotActive)

	tw, err := reg.GetTwin(ctx, "dev-1")
	require.NoError(t, err)
	require.JSONEq(t, `{"model":"x1","firmware":{"version":"1.1.0"}}`, string(tw.Properties.Reported.Doc))
	require.Equal(t, int64(3), tw.Properties.Reported.Version)
	require.NotNil(t, tw.LastActivityTime)
}

func TestConnectionEventsKeepTheNewestSession(t *testing.T) {
	ctx := context.Background()
	reg := open(t)
	provision(t, reg, "op", "dev-1")
	now := time.Now()
	require.NoError(t, reg.RecordConnections(ctx, []fleet.ConnEvent{
		{DeviceID: "dev-1", Kind: fleet.ConnUp, Session: 100, At: now},
		{DeviceID: "dev-1", Kind: fleet.ConnUp, Session: 200, At: now.Add(time.Second)},
		{DeviceID: "dev-1", Kind: fleet.ConnDown, Session: 100, At: now.Add(2 * time.Second)}, // late LWT of the old session
	}))
	d, err := reg.GetDevice(ctx, "dev-1")
	require.NoError(t, err)
	require.True(t, d.Online)
	require.Equal(t, int64(200), d.Session)

	require.NoError(t, reg.RecordConnections(ctx, []fleet.ConnEvent{
		{DeviceID: "dev-1", Kind: fleet.ConnDown, Session: 200, At: now.Add(3 * time.Second)},
		{DeviceID: "dev-1", Kind: fleet.ConnSeen, At: now.Add(4 * time.Second)},
	}))
	d, err = reg.GetDevice(ctx, "dev-1")
	require.NoError(t, err)
	require.False(t, d.Online)
	require.WithinDuration(t, now.Add(4*time.Second), *d.LastSeen, time.Millisecond)
}

// Two writers of one device's reported state at once (two gateways during a takeover) lose nothing: the
// merge holds no lock, so a write that finds the version moved is merged again on the newer state.
func TestConcurrentReportedPatchesAreAllMerged(t *testing.T) {
	ctx := context.Background()
	reg := open(t)
	provision(t, reg, "op", "dev-1")
	var before int64
	require.NoError(t, reg.Pool().QueryRow(ctx, "SELECT reported_version FROM devices WHERE id = 'dev-1'").Scan(&before))
	const writers, each = 4, 10
	var wg sync.WaitGroup
	errs := make(chan error, writers*each)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				patch := fmt.Sprintf(`{"k%d_%d": %d}`, w, i, i)
				res, err := reg.ApplyReported(ctx, []fleet.ReportedPatch{{DeviceID: "dev-1", RequestID: "r", Patch: []byte(patch)}})
				if err == nil {
					err = res[0].Err
				}
				if err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	var keys, version int64
	require.NoError(t, reg.Pool().QueryRow(ctx, "SELECT (SELECT count(*) FROM jsonb_object_keys(reported)), reported_version FROM devices WHERE id = 'dev-1'").
		Scan(&keys, &version))
	assert.Equal(t, int64(writers*each), keys, "every patch's key is in the merged document")
	assert.Equal(t, before+writers*each, version, "one version per patch")
}

// Activity alone ("seen") waits for no row lock: a device whose row another transaction holds (a reported
// patch being merged, which stamps last_seen itself) is skipped, and the others are refreshed at once.
func TestSeenEventsSkipLockedDevices(t *testing.T) {
	ctx := context.Background()
	reg := open(t)
	provision(t, reg, "op", "dev-1", "dev-2")
	tx, err := reg.Pool().Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(ctx) }()
	_, err = tx.Exec(ctx, "SELECT 1 FROM devices WHERE id = 'dev-1' FOR UPDATE")
	require.NoError(t, err)

	at := time.Now().Add(time.Hour).Truncate(time.Millisecond)
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	require.NoError(t, reg.RecordConnections(wctx, []fleet.ConnEvent{
		{DeviceID: "dev-1", Kind: fleet.ConnSeen, At: at},
		{DeviceID: "dev-2", Kind: fleet.ConnSeen, At: at},
	}), "seen events must not wait for dev-1's lock")
	require.NoError(t, tx.Rollback(ctx))
	d1, err := reg.GetDevice(ctx, "dev-1")
	require.NoError(t, err)
	d2, err := reg.GetDevice(ctx, "dev-2")
	require.NoError(t, err)
	assert.True(t, d1.LastSeen == nil || d1.LastSeen.Before(at), "the locked device was skipped")
	require.NotNil(t, d2.LastSeen)
	assert.WithinDuration(t, at, *d2.LastSeen, time.Millisecond)
}

func TestStatusChangesAreAnnounced(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	reg := open(t)
	provision(t, reg, "op", "dev-1", "dev-2")
	got := make(chan string, 10)
	go reg.ListenDeviceChanges(ctx, func(id string) { got <- id }) //nolint:errcheck
	next := func() string {
		select {
		case id := <-got:
			return id
		case <-time.After(10 * time.Second):
			t.Fatal("no notification")
			return ""
		}
	}
	require.Equal(t, "", next(), "the listener first says it is listening (and that caches must be dropped)")
	require.NoError(t, reg.SetStatus(ctx, "dev-2", fleet.StatusDisabled))
	require.Equal(t, "dev-2", next())
	require.NoError(t, reg.SetStatus(ctx, "dev-2", fleet.StatusDisabled))
	require.NoError(t, reg.SetStatus(ctx, "dev-1", fleet.StatusRetired))
	require.Equal(t, "dev-1", next(), "a write that changes nothing is not announced")
	require.ErrorIs(t, reg.SetStatus(ctx, "ghost", fleet.StatusRetired), fleet.ErrNotFound)
}

func TestQueriesRunAgainstTheRegistry(t *testing.T) {
	ctx := context.Background()
	reg := open(t)
	rows := []registry.StagedRow{
		{ID: "eu-1", Tags: `{"region":"eu","floor":3}`},
		{ID: "eu-2", Tags: `{"region":"eu","floor":5}`},
		{ID: "us-1", Tags: `{"region":"us"}`},
		{ID: "gone", Tags: `{"region":"eu"}`},
	}
	stage(t, reg, "op", rows)
	_, err := reg.ProvisionBatch(ctx, "op", 0, int64(len(rows)), 0)
	require.NoError(t, err)
	_, err = reg.ApplyReported(ctx, []fleet.ReportedPatch{
		{DeviceID: "eu-1", Patch: []byte(`{"model":"x1","firmware":{"version":"2.0.0"}}`)},
		{DeviceID: "eu-2", Patch: []byte(`{"model":"x1","firmware":{"version":"1.0.0"}}`)},
		{DeviceID: "us-1", Patch: []byte(`{"model":"x2","firmware":{"version":"1.0.0"}}`)},
	})
	require.NoError(t, err)
	require.NoError(t, reg.SetStatus(ctx, "gone", fleet.StatusRetired))

	ids := func(q string) []string {
		t.Helper()
		res, err := reg.Query(ctx, q, query.Options{})
		require.NoError(t, err, q)
		require.True(t, res.Star)
		var out []string
		for _, tw := range res.Twins {
			out = append(out, tw.DeviceID)
		}
		return out
	}
	require.ElementsMatch(t, []string{"eu-1", "eu-2"}, ids(`SELECT * FROM devices WHERE tags.region = 'eu'`), "retired devices are hidden")
	require.ElementsMatch(t, []string{"eu-2"}, ids(`SELECT * FROM devices WHERE tags.region = 'eu' AND properties.reported.firmware.version != '2.0.0'`))
	require.ElementsMatch(t, []string{"eu-2"}, ids(`SELECT * FROM devices WHERE tags.floor > 4`))
	require.ElementsMatch(t, []string{"eu-1", "us-1"}, ids(`SELECT * FROM devices WHERE deviceId IN ('eu-1', 'us-1')`))
	require.ElementsMatch(t, []string{"us-1"}, ids(`SELECT * FROM devices WHERE NOT IS_DEFINED(tags.floor)`))
	require.ElementsMatch(t, []string{"gone"}, ids(`SELECT * FROM devices WHERE status = 'retired'`))
	require.Empty(t, ids(`SELECT * FROM devices WHERE tags.region = 'eu''; DROP TABLE devices; --'`), "an injection attempt is just a string")

	res, err := reg.Query(ctx, `SELECT properties.reported.model, COUNT() AS n FROM devices GROUP BY properties.reported.model`, query.Options{})
	require.NoError(t, err)
	require.Equal(t, []string{"model", "n"}, res.Columns)
	counts := map[string]int64{}
	for _, r := range res.Rows {
		counts[fmt.Sprint(r[0])] = r[1].(int64)
	}
	require.Equal(t, map[string]int64{"x1": 2, "x2": 1}, counts)

	_, err = reg.Query(ctx, `SELECT * FROM devices WHERE tags.region = `, query.Options{})
	var se *query.SyntaxError
	require.True(t, errors.As(err, &se), "got %v", err)
	require.Positive(t, se.Pos)
}

func TestRetiredDevicesAndOversizedTwinsAreRefusedAndNothingChanges(t *testing.T) {
	ctx := context.Background()
	reg := open(t)
	provision(t, reg, "op", "dev-1", "dev-old")
	require.NoError(t, reg.SetStatus(ctx, "dev-old", fleet.StatusRetired))
	before, err := reg.GetTwin(ctx, "dev-old")
	require.NoError(t, err)
	_, err = reg.UpdateTwin(ctx, "dev-old", twin.Desired, []byte(`{"a":1}`), "")
	require.ErrorIs(t, err, fleet.ErrNotActive)
	res, err := reg.ApplyReported(ctx, []fleet.ReportedPatch{{DeviceID: "dev-old", Patch: []byte(`{"a":1}`)}})
	require.NoError(t, err)
	require.ErrorIs(t, res[0].Err, fleet.ErrNotActive)
	after, err := reg.GetTwin(ctx, "dev-old")
	require.NoError(t, err)
	require.Equal(t, before, after)

	big := []byte(`{"blob":"` + strings.Repeat("x", 4000) + `"}`)
	var err2 error
	for i := 0; i < 3 && err2 == nil; i++ {
		_, err2 = reg.UpdateTwin(ctx, "dev-1", twin.Tags, []byte(fmt.Sprintf(`{"blob%d":"%s"}`, i, strings.Repeat("x", 4000))), "")
	}
	var le *twin.LimitError
	require.True(t, errors.As(err2, &le), "tags stop at 8 KB: %v", err2)
	tw, err := reg.GetTwin(ctx, "dev-1")
	require.NoError(t, err)
	require.Equal(t, int64(3), tw.TagsVersion, "two writes landed, the third changed nothing")
	res, err = reg.ApplyReported(ctx, []fleet.ReportedPatch{{DeviceID: "dev-1", Patch: big}, {DeviceID: "dev-1", Patch: []byte(`{"n":1}`)}})
	require.NoError(t, err)
	require.NoError(t, res[0].Err)
	require.NoError(t, res[1].Err)
	huge := []byte(`{"s":"` + strings.Repeat("x", 5000) + `"}`)
	res, err = reg.ApplyReported(ctx, []fleet.ReportedPatch{{DeviceID: "dev-1", Patch: huge}})
	require.NoError(t, err)
	require.True(t, errors.As(res[0].Err, &le), "a string over 4 KB is refused")
}

// Staging validates every row itself, so whoever stages, invalid rows never become devices.
func TestUnvalidatedStagedRowsAreStillRefused(t *testing.T) {
	ctx := context.Background()
	reg := open(t)
	stage(t, reg, "op", []registry.StagedRow{
		{ID: "ok-1", Tags: `{"a":"b"}`},
		{ID: "Not Valid", Tags: `{}`},
		{ID: "ok-2", Tags: `[1]`},
		{ID: "ok-3", Tags: `{"deep":` + strings.Repeat(`{"a":`, 11) + `1` + strings.Repeat(`}`, 12)},
	})
	c, err := reg.ProvisionBatch(ctx, "op", 0, 4, 0)
	require.NoError(t, err)
	require.Equal(t, fleet.ProvisionCounts{Created: 1, Invalid: 3}, c)
	created, err := reg.CreatedBy(ctx, "op")
	require.NoError(t, err)
	require.Equal(t, map[string]bool{"ok-1": true}, created)
}

func TestBatchWithoutConflictsRecordsStagedParseErrors(t *testing.T) {
	for _, chunked := range []bool{false, true} {
		t.Run(fmt.Sprintf("chunked=%v", chunked), func(t *testing.T) { testBatchRecordsStagedParseErrors(t, chunked) })
	}
}

func testBatchRecordsStagedParseErrors(t *testing.T, chunked bool) {
	ctx := context.Background()
	reg := open(t)
	stageAs(t, reg, "op", []registry.StagedRow{
		{ID: "a-1", Tags: `{"r":"eu"}`},
		{ID: "Bad", ParseError: "invalid device id \"Bad\""},
		{ID: "a-2"},
	}, chunked)
	c, err := reg.ProvisionBatch(ctx, "op", 0, 3, 0)
	require.NoError(t, err)
	require.Equal(t, fleet.ProvisionCounts{Created: 2, Invalid: 1}, c)
	res, err := reg.ProvisionResults(ctx, "op", "invalid", 10)
	require.NoError(t, err)
	require.Equal(t, []fleet.RowResult{{Line: 3, ID: "Bad", Outcome: "invalid", Reason: "invalid device id \"Bad\""}}, res)
	tw, err := reg.GetTwin(ctx, "a-1")
	require.NoError(t, err)
	require.JSONEq(t, `{"r":"eu"}`, string(tw.Tags))
	a, err := reg.DeviceAuth(ctx, "a-2")
	require.NoError(t, err)
	require.True(t, creds.Matches("secret-a-2", a.Secret1Hash))
}

// Session numbers come from one sequence: concurrent callers (gateways) get distinct numbers, each call's in
// increasing order, and a caller's later call only larger ones.
func TestNextSessionsAreDistinctAndIncreasing(t *testing.T) {
	reg := open(t)
	ctx := context.Background()
	const callers, calls = 8, 20
	got := make([][]int64, callers)
	var wg sync.WaitGroup
	for c := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			last := int64(0)
			for i := range calls {
				nums, err := reg.NextSessions(ctx, 1+i%5)
				if !assert.NoError(t, err) || !assert.Len(t, nums, 1+i%5) {
					return
				}
				for _, n := range nums {
					assert.Greater(t, n, last, "caller %d call %d", c, i)
					last = n
				}
				got[c] = append(got[c], nums...)
			}
		}()
	}
	wg.Wait()
	seen := map[int64]bool{}
	total := 0
	for _, nums := range got {
		for _, n := range nums {
			require.False(t, seen[n], "session number %d handed out twice", n)
			seen[n] = true
			total++
		}
	}
	require.Equal(t, callers*calls/5*(1+2+3+4+5), total, "every number handed out was returned")
	empty, err := reg.NextSessions(ctx, 0)
	require.NoError(t, err)
	require.Empty(t, empty)
}

func TestReprovisioningARetiredIDIsRefusedWithHowToReuseIt(t *testing.T) {
	ctx := context.Background()
	reg := open(t)
	provision(t, reg, "first", "dev-old", "dev-live")
	_, err := reg.RetireDevices(ctx, "retire-1", []string{"dev-old"}, "test")
	require.NoError(t, err)

	stage(t, reg, "again", []registry.StagedRow{{ID: "dev-old"}, {ID: "dev-live"}, {ID: "dev-new"}})
	c, err := reg.ProvisionBatch(ctx, "again", 0, 3, 0)
	require.NoError(t, err)
	require.Equal(t, fleet.ProvisionCounts{Created: 1, Existing: 1, Invalid: 1}, c, "a retired id is refused, not 'already present'")
	res, err := reg.ProvisionResults(ctx, "again", fleet.RowInvalid, 10)
	require.NoError(t, err)
	require.Len(t, res, 1)
	require.Equal(t, "dev-old", res[0].ID)
	require.Contains(t, res[0].Reason, "retired on ")
	require.Contains(t, res[0].Reason, "fleetflow purge")
	created, err := reg.CreatedBy(ctx, "again")
	require.NoError(t, err)
	require.Equal(t, map[string]bool{"dev-new": true}, created)
}

func TestRowProblemIsTheStagingCheck(t *testing.T) {
	require.Equal(t, "", registry.RowProblem("dev-1", `{"a":"b"}`))
	require.Equal(t, "missing id", registry.RowProblem("", `{}`))
	require.NotEmpty(t, registry.RowProblem("Bad ID", `{}`))
	require.NotEmpty(t, registry.RowProblem("dev-1", `{"a":`))
}

// New devices are announced once per statement with fleet.DevicesInserted, so gateways forget the ids they
// remembered as unknown; a batch of many rows sends one notice, not one per device.
func TestInsertsAreAnnouncedOncePerStatement(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	reg := open(t)
	got := make(chan string, 100)
	go reg.ListenDeviceChanges(ctx, func(id string) { got <- id }) //nolint:errcheck
	next := func() string {
		select {
		case id := <-got:
			return id
		case <-time.After(10 * time.Second):
			t.Fatal("no notification")
			return ""
		}
	}
	require.Equal(t, "", next())
	provision(t, reg, "op", "dev-1", "dev-2", "dev-3")
	require.Equal(t, fleet.DevicesInserted, next())
	// A status change after it is the next notice: the three inserts sent one.
	require.NoError(t, reg.SetStatus(ctx, "dev-2", fleet.StatusDisabled))
	require.Equal(t, "dev-2", next())
}

// Options.MaxConns sizes the pool exactly, below the default floor of 16 and above the URL's pool_max_conns;
// a worker derives its activity slots from it.
func TestOpenWithMaxConns(t *testing.T) {
	url := testenv.Postgres(t)
	for _, want := range []int32{4, 40} {
		reg, err := registry.OpenWithOptions(context.Background(), url, registry.Options{MaxConns: want})
		require.NoError(t, err)
		require.Equal(t, want, reg.Pool().Config().MaxConns)
		reg.Close()
	}
	reg := open(t)
	require.Equal(t, int32(16), reg.Pool().Config().MaxConns, "the floor without MaxConns")
}

// A desired job batch holds no row lock while the worker merges: it reads without locks and writes where the
// version is still the one read. A device written between the read and the write (here by a transaction
// whose lock the batch's write waits for) rolls the batch back — the twins and the outcomes together — and
// the batch is merged again on the newer document: neither write is lost, and the job's write is recorded
// once, with its version.
func TestJobBatchMergesAgainOnADeviceWrittenMeanwhile(t *testing.T) {
	ctx := context.Background()
	reg := open(t)
	provision(t, reg, "op", "dev-1", "dev-2")
	_, err := reg.CreateJob(ctx, fleet.NewJob{ID: "job-set-desired-1", Kind: fleet.JobSetDesired,
		Query: "SELECT * FROM devices", Spec: json.RawMessage(`{"patch":{"mode":"eco"}}`)})
	require.NoError(t, err)
	ts, err := reg.JobTargets(ctx, "job-set-desired-1", 0, 1)
	require.NoError(t, err)
	require.Len(t, ts, 2)
	var v0 int64
	require.NoError(t, reg.Pool().QueryRow(ctx, "SELECT desired_version FROM devices WHERE id = 'dev-1'").Scan(&v0))

	tx, err := reg.Pool().Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(ctx) }()
	_, err = tx.Exec(ctx, `UPDATE devices SET desired = desired || '{"other": 1}', desired_version = desired_version + 1 WHERE id = 'dev-1'`)
	require.NoError(t, err)

	var calls int
	var versions []int64
	done := make(chan error, 1)
	go func() {
		done <- reg.PatchJobTargets(ctx, "job-set-desired-1", twin.Desired, ts, []byte(`{"mode":"eco"}`),
			func(ts []fleet.JobTarget, rs []fleet.PatchResult) ([]fleet.JobOutcome, error) {
				calls++
				versions = versions[:0]
				outs := make([]fleet.JobOutcome, len(ts))
				for i, r := range rs {
					if r.Err != nil {
						return nil, r.Err
					}
					versions = append(versions, r.Version)
					outs[i] = fleet.JobOutcome{Seq: ts[i].Seq, State: fleet.JobRunning}
				}
				return outs, nil
			})
	}()
	require.Eventually(t, func() bool {
		var waiting int
		require.NoError(t, reg.Pool().QueryRow(ctx, "SELECT count(*) FROM pg_locks WHERE NOT granted").Scan(&waiting))
		return waiting > 0
	}, 30*time.Second, 10*time.Millisecond, "the batch's write waits for dev-1's lock")
	require.NoError(t, tx.Commit(ctx))
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(30 * time.Second):
		t.Fatal("the batch did not finish after the lock was released")
	}

	assert.Equal(t, 2, calls, "the batch was merged again after dev-1 moved")
	tw, err := reg.GetTwin(ctx, "dev-1")
	require.NoError(t, err)
	assert.JSONEq(t, `{"other": 1, "mode": "eco"}`, string(tw.Properties.Desired.Doc), "neither write is lost")
	assert.Equal(t, v0+2, tw.Properties.Desired.Version)
	assert.Contains(t, versions, v0+2, "the outcome's version is the one written")
	c, err := reg.JobTotals(ctx, "job-set-desired-1")
	require.NoError(t, err)
	assert.Equal(t, fleet.JobCounts{Running: 2}, c)
	evs := kindsOf(deviceEvents(t, reg, "dev-1"))
	assert.Equal(t, []string{fmt.Sprintf(`desired_changed {"patch": {"mode": "eco"}, "version": %d}`, v0+2)}, evs,
		"one event, for the write that committed")
}
