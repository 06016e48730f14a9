package simulator

import (
	"strings"
	"testing"
)

func TestBrokersForSpreadsRoundRobinAndFailsOverEvenly(t *testing.T) {
	urls := []string{"a", "b", "c"}
	want := []string{"a b c", "b c a", "c a b", "a c b", "b a c", "c b a", "a b c"}
	for i, w := range want {
		if got := strings.Join(brokersFor(urls, i), " "); got != w {
			t.Errorf("device %d: %s, want %s", i, got, w)
		}
	}
	// Over many devices: each gateway is first for a third of them, and its devices' second choices are
	// the other two in equal shares.
	first := map[string]int{}
	second := map[string]map[string]int{}
	for i := range 600 {
		l := brokersFor(urls, i)
		first[l[0]]++
		if second[l[0]] == nil {
			second[l[0]] = map[string]int{}
		}
		second[l[0]][l[1]]++
	}
	for _, u := range urls {
		if first[u] != 200 {
			t.Errorf("%s is first for %d devices, want 200", u, first[u])
		}
		for v, n := range second[u] {
			if v == u || n != 100 {
				t.Errorf("devices of %s fail over to %s: %d, want 100 and never to itself", u, v, n)
			}
		}
	}
	if got := brokersFor([]string{"only"}, 7); len(got) != 1 || got[0] != "only" {
		t.Errorf("one gateway: %v", got)
	}
	c := Config{BrokerURL: " a ", BrokerURLs: []string{"b", "a", ""}}
	if got := strings.Join(c.brokers(), " "); got != "a b" {
		t.Errorf("brokers() = %q, want \"a b\"", got)
	}
}
