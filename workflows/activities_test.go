package workflows

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestActivityNameIsTheMethodName(t *testing.T) {
	require.Equal(t, "JobBatch", ActivityName(Activities.JobBatch))
	require.Equal(t, "ProvisionBatch", ActivityName(Activities.ProvisionBatch))
	require.Equal(t, "ReplaceDeviceRecord", ActivityName(Activities.ReplaceDeviceRecord))
	require.Equal(t, "PurgeArchivedDevices", ActivityName(Activities.PurgeArchivedDevices))
	require.NotEqual(t, "ReplaceDevice", ActivityName(Activities.ReplaceDeviceRecord), "an activity and a workflow never share a name")
}

// Every activity a recorded history scheduled is still registered under that name: a method of Activities
// (the worker registers each under its name) or one of the former names the worker keeps.
func TestRecordedActivityNamesAreStillRegistered(t *testing.T) {
	registered := map[string]bool{LegacyActReplaceDevice: true, LegacyActPurgeArchive: true}
	it := reflect.TypeOf((*Activities)(nil)).Elem()
	for i := range it.NumMethod() {
		registered[it.Method(i).Name] = true
	}
	files, err := filepath.Glob("testdata/*.json")
	require.NoError(t, err)
	seen := map[string]bool{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		require.NoError(t, err)
		var doc any
		require.NoError(t, json.Unmarshal(b, &doc))
		collectActivityTypes(doc, seen)
	}
	require.NotEmpty(t, seen)
	for name := range seen {
		require.True(t, registered[name], "activity %q of a recorded history is no longer registered", name)
	}
	require.True(t, seen[LegacyActReplaceDevice] && seen[LegacyActPurgeArchive], "the histories still hold the former names")
}

func collectActivityTypes(v any, into map[string]bool) {
	switch v := v.(type) {
	case map[string]any:
		for k, x := range v {
			if t, ok := x.(map[string]any); ok && k == "activityType" {
				if name, ok := t["name"].(string); ok {
					into[name] = true
				}
			}
			collectActivityTypes(x, into)
		}
	case []any:
		for _, x := range v {
			collectActivityTypes(x, into)
		}
	}
}
