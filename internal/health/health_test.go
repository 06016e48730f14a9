package health

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"
)

var now = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func obj(t *testing.T, s string) map[string]any {
	t.Helper()
	if s == "" {
		return nil
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(s), &m); err != nil {
		t.Fatalf("bad JSON %s: %v", s, err)
	}
	return m
}

func TestRulesDefaultsAndValidate(t *testing.T) {
	if got := (Rules{}).WithDefaults(); got != DefaultRules() {
		t.Errorf("zero rules with defaults = %+v", got)
	}
	if got := (Rules{OfflineAfter: time.Minute}).WithDefaults(); got.OfflineAfter != time.Minute || got.AckWithin != DefaultAckWithin {
		t.Errorf("defaults overwrote a set field: %+v", got)
	}
	if err := DefaultRules().Validate(); err != nil {
		t.Errorf("default rules invalid: %v", err)
	}
	err := Rules{OfflineAfter: -time.Minute, AckWithin: time.Minute}.Validate()
	if err == nil || !strings.Contains(err.Error(), "--offline-after -1m0s: must be > 0") ||
		!strings.Contains(err.Error(), "--expiring-within 0s: must be > 0") || strings.Contains(err.Error(), "--ack-within") {
		t.Errorf("Validate = %v", err)
	}
	if s := DefaultRules().String(); s != "offline after 10m · ack within 10m · credentials expiring within 7d" {
		t.Errorf("String = %q", s)
	}
}

func TestEvaluate(t *testing.T) {
	rules := DefaultRules()
	created := now.Add(-30 * 24 * time.Hour)
	base := func() Device {
		return Device{ID: "d", Status: StatusActive, Online: true, LastSeen: now.Add(-time.Minute), CreatedAt: created}
	}
	cases := []struct {
		name string
		edit func(d *Device)
		want []Problem
	}{
		{"healthy online device", func(d *Device) {}, nil},
		{"offline beyond the limit", func(d *Device) { d.Online, d.LastSeen = false, now.Add(-11*time.Minute) },
			[]Problem{{KindOffline, "last seen 2026-03-01T11:49:00Z"}}},
		{"offline within the limit", func(d *Device) { d.Online, d.LastSeen = false, now.Add(-9*time.Minute) }, nil},
		{"online but last seen long ago is not offline", func(d *Device) { d.LastSeen = now.Add(-time.Hour) }, nil},
		{"never connected, created long ago", func(d *Device) { d.Online, d.LastSeen = false, time.Time{} },
			[]Problem{{KindOffline, "never connected (created 2026-01-30T12:00:00Z)"}}},
		{"never connected, just created", func(d *Device) { d.Online, d.LastSeen, d.CreatedAt = false, time.Time{}, now.Add(-time.Minute) }, nil},
		{"unhealthy, any case", func(d *Device) { d.Reported = obj(t, `{"health":{"status":"FAILING"}}`) },
			[]Problem{{KindUnhealthy, "health.status is FAILING"}}},
		{"critical", func(d *Device) { d.Reported = obj(t, `{"health":{"status":"critical"}}`) },
			[]Problem{{KindUnhealthy, "health.status is critical"}}},
		{"ok health", func(d *Device) { d.Reported = obj(t, `{"health":{"status":"ok"}}`) }, nil},
		{"health not an object", func(d *Device) { d.Reported = obj(t, `{"health":"failing"}`) }, nil},
		{"Health field overrides reported", func(d *Device) { d.Health = "unhealthy" },
			[]Problem{{KindUnhealthy, "health.status is unhealthy"}}},
		{"desired pending beyond the limit", func(d *Device) {
			d.DesiredAt = now.Add(-time.Hour)
			d.Desired = obj(t, `{"telemetryInterval":30,"mode":"eco","zeta":[1,2]}`)
			d.Reported = obj(t, `{"telemetryInterval":60,"mode":"eco","zeta":[1,2]}`)
		}, []Problem{{KindDesiredPending, "desired not acknowledged since 2026-03-01T11:00:00Z: telemetryInterval"}}},
		{"desired pending within the limit", func(d *Device) {
			d.DesiredAt = now.Add(-5 * time.Minute)
			d.Desired = obj(t, `{"telemetryInterval":30}`)
		}, nil},
		{"desired acknowledged (numbers by value, objects by content)", func(d *Device) {
			d.DesiredAt = now.Add(-time.Hour)
			d.Desired = obj(t, `{"telemetryInterval":30,"cfg":{"a":1,"b":[true,null]}}`)
			d.Reported = obj(t, `{"telemetryInterval":30.0,"cfg":{"b":[true,null],"a":1},"extra":1}`)
		}, nil},
		{"desired never changed counts from creation", func(d *Device) {
			d.Desired = obj(t, `{"b":1,"a":2}`)
		}, []Problem{{KindDesiredPending, "desired not acknowledged since 2026-01-30T12:00:00Z: a, b"}}},
		{"firmware compares version only", func(d *Device) {
			d.DesiredAt = now.Add(-time.Hour)
			d.Desired = obj(t, `{"firmware":{"jobId":"j","version":"2.0.0","url":"http://x"}}`)
			d.Reported = obj(t, `{"firmware":{"version":"2.0.0"}}`)
		}, nil},
		{"firmware version differs", func(d *Device) {
			d.DesiredAt = now.Add(-time.Hour)
			d.Desired = obj(t, `{"firmware":{"version":"2.0.0"}}`)
			d.Reported = obj(t, `{"firmware":{"version":"1.0.0"}}`)
			d.CompliantVersion, d.CompliantRollout = "1.0.0", "rollout-1.0.0-1"
		}, []Problem{{KindDesiredPending, "desired not acknowledged since 2026-03-01T11:00:00Z: firmware"}}},
		{"noncompliant firmware", func(d *Device) {
			d.Reported = obj(t, `{"firmware":{"version":"1.0.0"}}`)
			d.CompliantVersion, d.CompliantRollout = "2.0.0", "rollout-2.0.0-1"
		}, []Problem{{KindFirmwareNoncompliant, "runs 1.0.0; rollout rollout-2.0.0-1 installed 2.0.0"}}},
		{"noncompliant, no version reported", func(d *Device) {
			d.CompliantVersion, d.CompliantRollout = "2.0.0", "rollout-2.0.0-1"
		}, []Problem{{KindFirmwareNoncompliant, "runs no reported version; rollout rollout-2.0.0-1 installed 2.0.0"}}},
		{"compliant", func(d *Device) {
			d.FirmwareVersion, d.CompliantVersion = "2.0.0", "2.0.0"
		}, nil},
		{"no rollout selects it", func(d *Device) { d.FirmwareVersion = "0.1" }, nil},
		{"credentials expiring", func(d *Device) { d.CredentialExpiresAt = now.Add(6 * 24 * time.Hour) },
			[]Problem{{KindCredentialExpiring, "credentials expire 2026-03-07T12:00:00Z"}}},
		{"credentials expired", func(d *Device) { d.CredentialExpiresAt = now.Add(-time.Hour) },
			[]Problem{{KindCredentialExpiring, "credentials expired 2026-03-01T11:00:00Z"}}},
		{"credentials valid long enough", func(d *Device) { d.CredentialExpiresAt = now.Add(8 * 24 * time.Hour) }, nil},
		{"everything at once, in Kinds order", func(d *Device) {
			d.Online, d.LastSeen = false, now.Add(-time.Hour)
			d.CredentialExpiresAt = now.Add(time.Hour)
			d.Reported = obj(t, `{"health":{"status":"unhealthy"},"firmware":{"version":"1"}}`)
			d.Desired = obj(t, `{"x":1}`)
			d.CompliantVersion, d.CompliantRollout = "2", "r"
		}, []Problem{
			{KindOffline, "last seen 2026-03-01T11:00:00Z"},
			{KindUnhealthy, "health.status is unhealthy"},
			{KindDesiredPending, "desired not acknowledged since 2026-01-30T12:00:00Z: x"},
			{KindFirmwareNoncompliant, "runs 1; rollout r installed 2"},
			{KindCredentialExpiring, "credentials expire 2026-03-01T13:00:00Z"},
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := base()
			c.edit(&d)
			if got := Evaluate(d, rules, now); !reflect.DeepEqual(got, c.want) {
				t.Errorf("Evaluate = %+v\nwant       %+v", got, c.want)
			}
			// Disabled and retired devices have no problems whatever their state.
			for _, st := range []string{StatusDisabled, StatusRetired} {
				d.Status = st
				if got := Evaluate(d, rules, now); got != nil {
					t.Errorf("%s device: Evaluate = %+v, want none", st, got)
				}
			}
		})
	}
}

func TestEvaluateRespectsRules(t *testing.T) {
	d := Device{ID: "d", Status: StatusActive, LastSeen: now.Add(-3 * time.Minute), CreatedAt: now.Add(-time.Hour),
		DesiredAt: now.Add(-3 * time.Minute), Desired: map[string]any{"a": 1}, CredentialExpiresAt: now.Add(36 * time.Hour)}
	if got := Evaluate(d, DefaultRules(), now); len(got) != 1 || got[0].Kind != KindCredentialExpiring {
		t.Fatalf("default rules: %+v", got)
	}
	strict := Rules{OfflineAfter: 2 * time.Minute, AckWithin: 2 * time.Minute, ExpiringWithin: time.Hour}
	got := Evaluate(d, strict, now)
	var kinds []string
	for _, p := range got {
		kinds = append(kinds, p.Kind)
	}
	if !reflect.DeepEqual(kinds, []string{KindOffline, KindDesiredPending}) {
		t.Errorf("strict rules: %v", kinds)
	}
}

func TestPendingKeys(t *testing.T) {
	cases := []struct {
		desired, reported string
		want              []string
	}{
		{`{}`, `{"a":1}`, nil},
		{`{"a":1}`, ``, []string{"a"}},
		{`{"a":1}`, `{"a":"1"}`, []string{"a"}},
		{`{"a":[1,2]}`, `{"a":[2,1]}`, []string{"a"}},
		{`{"a":{"x":1}}`, `{"a":{"x":1,"y":2}}`, []string{"a"}},
		{`{"B":1,"a":1,"_":1}`, `{}`, []string{"B", "_", "a"}}, // byte order, as COLLATE "C"
		{`{"firmware":{"url":"u"}}`, `{}`, nil},                // no version on either side
		{`{"firmware":{"version":"1"}}`, `{"firmware":"1"}`, []string{"firmware"}},
		{`{"firmware":"2.0"}`, `{"firmware":{"version":"2.0"}}`, []string{"firmware"}},
	}
	for _, c := range cases {
		if got := PendingKeys(obj(t, c.desired), obj(t, c.reported)); !reflect.DeepEqual(got, c.want) {
			t.Errorf("PendingKeys(%s, %s) = %v, want %v", c.desired, c.reported, got, c.want)
		}
	}
}

func TestReconcile(t *testing.T) {
	f := func(dev, kind string) Finding {
		return Finding{DeviceID: dev, Problem: Problem{Kind: kind, Detail: dev + " " + kind}}
	}
	a := func(id int64, dev, kind string) Alert { return Alert{ID: id, DeviceID: dev, Kind: kind} }
	cases := []struct {
		name                string
		open                []Alert
		findings            []Finding
		wantOpen, wantFresh []Finding
		wantResolve         []Alert
	}{
		{name: "nothing"},
		{name: "first check opens everything",
			findings: []Finding{f("a", KindOffline), f("b", KindUnhealthy)},
			wantOpen: []Finding{f("a", KindOffline), f("b", KindUnhealthy)}},
		{name: "same problems refresh",
			open:      []Alert{a(1, "a", KindOffline)},
			findings:  []Finding{f("a", KindOffline)},
			wantFresh: []Finding{f("a", KindOffline)}},
		{name: "a problem gone resolves, a new one opens",
			open:        []Alert{a(1, "a", KindOffline), a(2, "b", KindUnhealthy)},
			findings:    []Finding{f("b", KindUnhealthy), f("c", KindOffline)},
			wantOpen:    []Finding{f("c", KindOffline)},
			wantFresh:   []Finding{f("b", KindUnhealthy)},
			wantResolve: []Alert{a(1, "a", KindOffline)}},
		{name: "kinds are separate",
			open:        []Alert{a(1, "a", KindOffline)},
			findings:    []Finding{f("a", KindUnhealthy)},
			wantOpen:    []Finding{f("a", KindUnhealthy)},
			wantResolve: []Alert{a(1, "a", KindOffline)}},
		{name: "duplicate findings count once",
			findings: []Finding{f("a", KindOffline), f("a", KindOffline)},
			wantOpen: []Finding{f("a", KindOffline)}},
		{name: "all resolve",
			open:        []Alert{a(1, "a", KindOffline), a(2, "a", KindCredentialExpiring)},
			wantResolve: []Alert{a(1, "a", KindOffline), a(2, "a", KindCredentialExpiring)}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			o, r, x := Reconcile(c.open, c.findings)
			if !reflect.DeepEqual(o, c.wantOpen) || !reflect.DeepEqual(r, c.wantFresh) || !reflect.DeepEqual(x, c.wantResolve) {
				t.Errorf("Reconcile =\n open %+v\n refresh %+v\n resolve %+v\nwant\n open %+v\n refresh %+v\n resolve %+v",
					o, r, x, c.wantOpen, c.wantFresh, c.wantResolve)
			}
		})
	}
}

func TestKinds(t *testing.T) {
	if got := Kinds(); len(got) != 5 || got[0] != KindOffline || got[4] != KindCredentialExpiring {
		t.Errorf("Kinds = %v", got)
	}
}
