package searchattr

import (
	"testing"
)

func TestRegistrationMatchesDefinitions(t *testing.T) {
	// The dev server (flags from Definitions) and the test servers (Registration) must register the same set.
	reg := map[string]string{}
	for k := range Registration().GetUntypedValues() {
		reg[k.GetName()] = k.GetValueType().String()
	}
	defs := Definitions()
	if len(reg) != len(defs) {
		t.Fatalf("Registration has %d attributes, Definitions %d", len(reg), len(defs))
	}
	for _, d := range defs {
		if reg[d.Name] != d.Type.String() {
			t.Errorf("%s: Registration type %q, Definitions %q", d.Name, reg[d.Name], d.Type)
		}
	}
}

func TestFlag(t *testing.T) {
	want := []string{"FleetOp=Keyword", "FleetOpState=Keyword", "FleetDevicesTotal=Int", "FleetDevicesDone=Int", "FleetDevicesFailed=Int", "FleetStage=Keyword", "FleetDevicesApplied=Double", "FleetMetrics=KeywordList"}
	for i, d := range Definitions() {
		if got := d.Flag(); got != want[i] {
			t.Errorf("Flag() = %q, want %q", got, want[i])
		}
	}
	if Op.GetName() != OpName || State.GetName() != StateName || Total.GetName() != TotalName ||
		Done.GetName() != DoneName || Failed.GetName() != FailedName {
		t.Error("a typed key's name differs from its constant")
	}
}
