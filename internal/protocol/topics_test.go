package protocol_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/fleetflow/fleetflow/internal/protocol"
)

func TestParseRoundTrip(t *testing.T) {
	for topic, want := range map[string]protocol.Topic{
		"devices/d1/telemetry":                           {Device: "d1", Kind: protocol.KindTelemetry},
		"devices/d1/telemetry/env":                       {Device: "d1", Kind: protocol.KindTelemetry, Stream: "env"},
		"devices/d1/telemetry/env/room 2":                {Device: "d1", Kind: protocol.KindTelemetry, Stream: "env/room 2"},
		"devices/d1/twin/get/r-1":                        {Device: "d1", Kind: protocol.KindTwinGet, RequestID: "r-1"},
		"devices/d1/twin/reported/R_2.x":                 {Device: "d1", Kind: protocol.KindTwinReported, RequestID: "R_2.x"},
		"devices/d1/twin/res/200/r":                      {Device: "d1", Kind: protocol.KindTwinResponse, Status: 200, RequestID: "r"},
		"devices/d1/twin/desired/4":                      {Device: "d1", Kind: protocol.KindDesired, Version: 4},
		"devices/d1/twin/desired/9223372036854775807":    {Device: "d1", Kind: protocol.KindDesired, Version: 1<<63 - 1},
		"devices/d1/methods/req/ping/r9":                 {Device: "d1", Kind: protocol.KindMethodRequest, Method: "ping", RequestID: "r9"},
		"devices/dev.7/methods/req/Diag_2.x/a_b":         {Device: "dev.7", Kind: protocol.KindMethodRequest, Method: "Diag_2.x", RequestID: "a_b"},
		"devices/d1/methods/res/404/r9":                  {Device: "d1", Kind: protocol.KindMethodResponse, Status: 404, RequestID: "r9"},
		"devices/d1/methods/res/100/r9":                  {Device: "d1", Kind: protocol.KindMethodResponse, Status: 100, RequestID: "r9"},
		"devices/d1/methods/res/599/r9":                  {Device: "d1", Kind: protocol.KindMethodResponse, Status: 599, RequestID: "r9"},
		"devices/d1/state":                               {Device: "d1", Kind: protocol.KindState},
		"devices/d1/jobs/job-7/status":                   {Device: "d1", Kind: protocol.KindJobStatus, JobID: "job-7"},
		"devices/" + strings.Repeat("a", 64) + "/state":  {Device: strings.Repeat("a", 64), Kind: protocol.KindState},
		"devices/d1/twin/get/" + strings.Repeat("R", 64): {Device: "d1", Kind: protocol.KindTwinGet, RequestID: strings.Repeat("R", 64)},
	} {
		got, err := protocol.Parse(topic)
		if err != nil {
			t.Errorf("Parse(%q): %v", topic, err)
			continue
		}
		if got != want {
			t.Errorf("Parse(%q) = %+v, want %+v", topic, got, want)
		}
		if s := got.String(); s != topic {
			t.Errorf("Parse(%q).String() = %q", topic, s)
		}
	}
}

func TestParseRejects(t *testing.T) {
	long := strings.Repeat("a", 65)
	for _, topic := range []string{
		"",
		"devices",
		"devices/",
		"devices/d1",
		"devices/d1/",
		"elsewhere/d1/telemetry",
		"/devices/d1/telemetry",
		"$share/g/devices/d1/telemetry",
		"devices//telemetry",
		"devices/D1/telemetry",                        // upper case id
		"devices/-d1/telemetry",                       // id must start with a letter or digit
		"devices/inline/telemetry",                    // reserved id
		"devices/+/telemetry",                         // wildcard id
		"devices/" + long + "/state",                  // id too long
		"devices/d1/telemetry/",                       // empty stream
		"devices/d1/telemetry//x",                     // empty stream level
		"devices/d1/telemetry/a/+",                    // wildcard in stream
		"devices/d1/telemetry/#",                      // wildcard in stream
		"devices/d1/telemetry/\xff",                   // not UTF-8
		"devices/d1/telemetry/a\x00b",                 // NUL
		"devices/d1/state/",                           // level after state
		"devices/d1/state/x",                          // level after state
		"devices/d1/unknown",                          // unknown group
		"devices/d1/twin",                             // twin without op
		"devices/d1/twin/get",                         // no rid
		"devices/d1/twin/get/",                        // empty rid
		"devices/d1/twin/get/a/b",                     // rid with a level
		"devices/d1/twin/get/bad!",                    // rid character
		"devices/d1/twin/get/" + long,                 // rid too long
		"devices/d1/twin/reported/a b",                // rid character
		"devices/d1/twin/patch/r1",                    // unknown twin op
		"devices/d1/twin/res/200",                     // no rid
		"devices/d1/twin/res/200/",                    // empty rid
		"devices/d1/twin/res/abc/r",                   // status not a number
		"devices/d1/twin/res/99/r",                    // status too small
		"devices/d1/twin/res/600/r",                   // status too large
		"devices/d1/twin/res/0200/r",                  // not canonical
		"devices/d1/twin/res/+200/r",                  // not canonical
		"devices/d1/twin/res/200/r/x",                 // extra level
		"devices/d1/twin/desired",                     // no version
		"devices/d1/twin/desired/",                    // empty version
		"devices/d1/twin/desired/0",                   // version < 1
		"devices/d1/twin/desired/-4",                  // negative
		"devices/d1/twin/desired/04",                  // not canonical
		"devices/d1/twin/desired/4/x",                 // extra level
		"devices/d1/twin/desired/9223372036854775808", // overflows int64
		"devices/d1/methods",                          // no op
		"devices/d1/methods/call/ping/r9",             // unknown op
		"devices/d1/methods/req/ping",                 // no rid
		"devices/d1/methods/req//r9",                  // empty method
		"devices/d1/methods/req/pi ng/r9",             // method character
		"devices/d1/methods/req/" + long + "/r9",      // method too long
		"devices/d1/methods/req/ping/bad!",            // rid character
		"devices/d1/methods/req/ping/r9/x",            // extra level
		"devices/d1/methods/res/700/r9",               // status too large
		"devices/d1/methods/res/abc/r9",               // status not a number
		"devices/d1/methods/res/200",                  // no rid
		"devices/d1/jobs/job-7",                       // no /status
		"devices/d1/jobs/job-7/progress",              // not /status
		"devices/d1/jobs/job-7/status/x",              // extra level
		"devices/d1/jobs//status",                     // empty job id
		"devices/d1/jobs/job!/status",                 // job id character
		"devices/d1/jobs/" + long + "/status",         // job id too long
	} {
		got, err := protocol.Parse(topic)
		if err == nil {
			t.Errorf("Parse(%q) = %+v, want an error", topic, got)
			continue
		}
		if !errors.Is(err, protocol.ErrInvalidTopic) {
			t.Errorf("Parse(%q): error %v does not wrap ErrInvalidTopic", topic, err)
		}
		if got != (protocol.Topic{}) {
			t.Errorf("Parse(%q) returned %+v with its error", topic, got)
		}
	}
}

func TestBuilders(t *testing.T) {
	for got, want := range map[string]string{
		protocol.TelemetryTopic("d1", ""):                         "devices/d1/telemetry",
		protocol.TelemetryTopic("d1", "env"):                      "devices/d1/telemetry/env",
		protocol.TwinGetTopic("d1", "7"):                          "devices/d1/twin/get/7",
		protocol.TwinReportedTopic("d1", "8"):                     "devices/d1/twin/reported/8",
		protocol.TwinResponseTopic("d1", 204, "8"):                "devices/d1/twin/res/204/8",
		protocol.DesiredTopic("d1", 12):                           "devices/d1/twin/desired/12",
		protocol.MethodRequestTopic("d1", "reboot", "x"):          "devices/d1/methods/req/reboot/x",
		protocol.MethodResponseTopic("d1", 404, "r9"):             "devices/d1/methods/res/404/r9",
		protocol.StateTopic("d1"):                                 "devices/d1/state",
		protocol.JobStatusTopic("d1", "j1"):                       "devices/d1/jobs/j1/status",
		protocol.TwinResponseFilter("d1"):                         "devices/d1/twin/res/#",
		protocol.DesiredFilter("d1"):                              "devices/d1/twin/desired/#",
		protocol.MethodRequestFilter("d1"):                        "devices/d1/methods/req/#",
		protocol.SharedFilter("g", protocol.MethodResponseFilter): "$share/g/devices/+/methods/res/+/+",
		protocol.Topic{}.String():                                 "",
	} {
		if got != want {
			t.Errorf("got %q, want %q", got, want)
		}
	}
}

func TestKinds(t *testing.T) {
	from := map[protocol.Kind]bool{
		protocol.KindTelemetry: true, protocol.KindTwinGet: true, protocol.KindTwinReported: true,
		protocol.KindMethodResponse: true, protocol.KindState: true, protocol.KindJobStatus: true,
	}
	for k := protocol.KindInvalid; k <= protocol.KindJobStatus; k++ {
		if k.FromDevice() != from[k] {
			t.Errorf("%v.FromDevice() = %v", k, k.FromDevice())
		}
		if k.String() == "" || strings.HasPrefix(k.String(), "Kind(") {
			t.Errorf("kind %d has no name", int(k))
		}
	}
	if s := protocol.Kind(99).String(); s != "Kind(99)" {
		t.Errorf("Kind(99).String() = %q", s)
	}
}

// FuzzParse checks that Parse never panics, that what it accepts it builds again (Parse(x).String() == x),
// and that every topic it accepts is inside both parties' ACL.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"devices/d1/telemetry", "devices/d1/telemetry/a/b", "devices/d1/twin/get/1", "devices/d1/twin/reported/x",
		"devices/d1/twin/res/200/1", "devices/d1/twin/desired/3", "devices/d1/methods/req/m/r",
		"devices/d1/methods/res/404/r", "devices/d1/state", "devices/d1/jobs/j/status", "devices/inline/state",
		"devices/d1/twin/desired/007", "devices/d1//", "$share/x/devices/#",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, topic string) {
		got, err := protocol.Parse(topic)
		if err != nil {
			if got != (protocol.Topic{}) {
				t.Fatalf("Parse(%q) returned %+v with error %v", topic, got, err)
			}
			return
		}
		if got.Kind == protocol.KindInvalid || !protocol.ValidDeviceID(got.Device) {
			t.Fatalf("Parse(%q) accepted %+v", topic, got)
		}
		if s := got.String(); s != topic {
			t.Fatalf("Parse(%q).String() = %q", topic, s)
		}
		if !protocol.DeviceMayUse(got.Device, topic) || !protocol.ServiceMayUse(topic) {
			t.Fatalf("a contract topic %q is outside the ACL", topic)
		}
	})
}

// FuzzBuild checks the other direction: topics built from parts that pass the validators parse back to
// those parts.
func FuzzBuild(f *testing.F) {
	f.Add("d1", "r1", "ping", "job-1", "env/room", 200, int64(3))
	f.Add("inline", "", "a/b", "#", "", 99, int64(0))
	f.Fuzz(func(t *testing.T, id, rid, method, job, stream string, status int, version int64) {
		if !protocol.ValidDeviceID(id) {
			return
		}
		want := []protocol.Topic{
			{Device: id, Kind: protocol.KindState},
			{Device: id, Kind: protocol.KindTelemetry},
		}
		if protocol.ValidStream(stream) {
			want = append(want, protocol.Topic{Device: id, Kind: protocol.KindTelemetry, Stream: stream})
		}
		if protocol.ValidRequestID(rid) {
			want = append(want, protocol.Topic{Device: id, Kind: protocol.KindTwinGet, RequestID: rid},
				protocol.Topic{Device: id, Kind: protocol.KindTwinReported, RequestID: rid})
			if status >= 100 && status <= 599 {
				want = append(want, protocol.Topic{Device: id, Kind: protocol.KindTwinResponse, Status: status, RequestID: rid},
					protocol.Topic{Device: id, Kind: protocol.KindMethodResponse, Status: status, RequestID: rid})
			}
			if protocol.ValidMethod(method) {
				want = append(want, protocol.Topic{Device: id, Kind: protocol.KindMethodRequest, Method: method, RequestID: rid})
			}
		}
		if version >= 1 {
			want = append(want, protocol.Topic{Device: id, Kind: protocol.KindDesired, Version: version})
		}
		if protocol.ValidJobID(job) {
			want = append(want, protocol.Topic{Device: id, Kind: protocol.KindJobStatus, JobID: job})
		}
		for _, w := range want {
			got, err := protocol.Parse(w.String())
			if err != nil || got != w {
				t.Fatalf("Parse(%q) = %+v, %v; want %+v", w.String(), got, err, w)
			}
		}
	})
}
