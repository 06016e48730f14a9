package registry_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/protocol"
	"github.com/fleetflow/fleetflow/internal/registry"
	"github.com/fleetflow/fleetflow/internal/testenv"
)

// jobStatusRow is a device_job_status row as stored.
type jobStatusRow struct {
	Status   string
	Reason   string
	Progress int
	At       time.Time
}

func readJobStatuses(t *testing.T, reg *registry.Registry, job string) map[string]jobStatusRow {
	t.Helper()
	rows, err := reg.Pool().Query(context.Background(),
		`SELECT device_id, status, reason, progress, updated_at FROM device_job_status WHERE job_id = $1`, job)
	require.NoError(t, err)
	defer rows.Close()
	out := map[string]jobStatusRow{}
	for rows.Next() {
		var id string
		var r jobStatusRow
		require.NoError(t, rows.Scan(&id, &r.Status, &r.Reason, &r.Progress, &r.At))
		out[id] = r
	}
	require.NoError(t, rows.Err())
	return out
}

func TestValidJobStatus(t *testing.T) {
	for _, s := range []string{"downloading", "installing", "rebooting", "succeeded", "failed"} {
		assert.True(t, protocol.ValidJobStatus(s), s)
	}
	for _, s := range []string{"", "Succeeded", "done", "pending", "failed "} {
		assert.False(t, protocol.ValidJobStatus(s), "%q", s)
	}
}

func TestRecordJobStatuses(t *testing.T) {
	ctx := context.Background()
	reg, err := registry.Open(ctx, testenv.Postgres(t))
	require.NoError(t, err)
	t.Cleanup(reg.Close)

	t0 := time.Now().UTC().Truncate(time.Microsecond)
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	// One batch with the same key several times: the last one wins, and a single statement cannot touch a
	// row twice, so this also proves the batch is deduplicated before the upsert.
	require.NoError(t, reg.RecordJobStatuses(ctx, []fleet.JobStatus{
		{DeviceID: "dev-1", JobID: "job-a", Status: "downloading", Progress: 10, At: at(0)},
		{DeviceID: "dev-2", JobID: "job-a", Status: "downloading", At: at(0)},
		{DeviceID: "dev-1", JobID: "job-a", Status: "downloading", Progress: 60, At: at(1 * time.Millisecond)},
		{DeviceID: "dev-1", JobID: "job-b", Status: "succeeded", Progress: 100, At: at(1 * time.Millisecond)},
		{DeviceID: "dev-1", JobID: "job-a", Status: "installing", At: at(2 * time.Millisecond)},
	}))
	a := readJobStatuses(t, reg, "job-a")
	require.Len(t, a, 2)
	assert.Equal(t, "installing", a["dev-1"].Status)
	assert.Equal(t, 0, a["dev-1"].Progress)
	assert.True(t, a["dev-1"].At.Equal(at(2*time.Millisecond)), "%s", a["dev-1"].At)
	assert.Equal(t, "downloading", a["dev-2"].Status)
	b := readJobStatuses(t, reg, "job-b")
	require.Len(t, b, 1)
	assert.Equal(t, jobStatusRow{Status: "succeeded", Progress: 100, At: b["dev-1"].At}, b["dev-1"])

	// A later batch updates the rows; the reason is kept verbatim.
	require.NoError(t, reg.RecordJobStatuses(ctx, []fleet.JobStatus{
		{DeviceID: "dev-1", JobID: "job-a", Status: "failed", Reason: "install failed: checksum mismatch", At: at(time.Second)},
		{DeviceID: "dev-2", JobID: "job-a", Status: "succeeded", Progress: 100, At: at(time.Second)},
	}))
	a = readJobStatuses(t, reg, "job-a")
	assert.Equal(t, jobStatusRow{Status: "failed", Reason: "install failed: checksum mismatch", At: at(time.Second)}, trimAt(a["dev-1"]))
	assert.Equal(t, "succeeded", a["dev-2"].Status)

	// A delayed batch carrying an older status (a retry, another gateway) does not move the job back.
	require.NoError(t, reg.RecordJobStatuses(ctx, []fleet.JobStatus{
		{DeviceID: "dev-2", JobID: "job-a", Status: "rebooting", At: at(500 * time.Millisecond)},
	}))
	assert.Equal(t, "succeeded", readJobStatuses(t, reg, "job-a")["dev-2"].Status)

	// A zero time is stamped by the registry; an empty batch is a no-op.
	require.NoError(t, reg.RecordJobStatuses(ctx, []fleet.JobStatus{{DeviceID: "dev-3", JobID: "job-a", Status: "downloading"}}))
	assert.WithinDuration(t, time.Now(), readJobStatuses(t, reg, "job-a")["dev-3"].At, time.Minute)
	require.NoError(t, reg.RecordJobStatuses(ctx, nil))

	// Invalid input is refused as a whole, before anything is written.
	for _, bad := range []fleet.JobStatus{
		{DeviceID: "dev-9", JobID: "job-x", Status: "done"},
		{DeviceID: "dev-9", JobID: "job-x", Status: "downloading", Progress: 101},
		{DeviceID: "", JobID: "job-x", Status: "failed"},
		{DeviceID: "dev-9", JobID: "", Status: "failed"},
	} {
		err := reg.RecordJobStatuses(ctx, []fleet.JobStatus{
			{DeviceID: "dev-8", JobID: "job-x", Status: "downloading"}, bad,
		})
		require.Error(t, err, "%+v", bad)
	}
	assert.Empty(t, readJobStatuses(t, reg, "job-x"))
}

// trimAt normalises the stored time's location so rows compare with ==.
func trimAt(r jobStatusRow) jobStatusRow {
	r.At = r.At.UTC()
	return r
}

// A large batch is one statement, and concurrent batches over the same keys (several gateways) neither fail
// nor deadlock.
func TestRecordJobStatusesConcurrentBatches(t *testing.T) {
	ctx := context.Background()
	reg, err := registry.Open(ctx, testenv.Postgres(t))
	require.NoError(t, err)
	t.Cleanup(reg.Close)

	const devices, writers = 2000, 4
	errs := make(chan error, writers)
	for w := range writers {
		go func() {
			batch := make([]fleet.JobStatus, 0, devices)
			for i := range devices {
				// Each writer walks the keys in a different order (multipliers coprime with devices).
				d := (i*[]int{1, 3, 7, 9}[w] + w*7) % devices
				batch = append(batch, fleet.JobStatus{DeviceID: fmt.Sprintf("dev-%05d", d), JobID: "rollout-2.0.0",
					Status: "succeeded", Progress: 100, At: time.Now()})
			}
			errs <- reg.RecordJobStatuses(ctx, batch)
		}()
	}
	for range writers {
		require.NoError(t, <-errs)
	}
	rows := readJobStatuses(t, reg, "rollout-2.0.0")
	assert.Len(t, rows, devices)
}
