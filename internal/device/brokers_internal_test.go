package device

import (
	"net/url"
	"testing"
)

func TestBrokersListAndRotation(t *testing.T) {
	c := Config{BrokerURL: "tcp://a:1", BrokerURLs: []string{"tcp://b:1", "tcp://a:1", "ssl://c:2"}}
	got := c.brokers()
	if len(got) != 3 || got[0] != "tcp://a:1" || got[1] != "tcp://b:1" || got[2] != "ssl://c:2" {
		t.Fatalf("brokers() = %v, want BrokerURL first, then the others without repeats", got)
	}
	if !anyTLS(got) || anyTLS(got[:2]) {
		t.Fatalf("anyTLS wrong for %v", got)
	}
	c.Secret = "s"
	if err := c.setBrokers(); err != nil || c.BrokerURL != "tcp://a:1" {
		t.Errorf("setBrokers: %v; BrokerURL %q: want the first URL", err, c.BrokerURL)
	}
	if err := c.prepareCredentials(); err != nil || c.TLS == nil || c.TLSConfig == nil {
		t.Errorf("prepareCredentials: %v; TLS %v: want TLS for the ssl:// one", err, c.TLS)
	}
	only := Config{BrokerURLs: []string{"tcp://b:1", "tcp://c:1"}, Secret: "s"}
	if err := only.setBrokers(); err != nil || only.BrokerURL != "tcp://b:1" {
		t.Errorf("setBrokers of a plaintext list: %v, %q", err, only.BrokerURL)
	}
	if err := only.prepareCredentials(); err != nil || only.TLS != nil || only.TLSConfig != nil {
		t.Errorf("prepareCredentials of a plaintext list: %v, %v, %v", err, only.TLS, only.TLSConfig)
	}
	if err := checkBrokers([]string{"tcp://a:1", "127.0.0.1:1883"}); err == nil {
		t.Error("a URL without scheme is accepted")
	}

	var servers []*url.URL
	for _, s := range got {
		u, _ := url.Parse(s)
		servers = append(servers, u)
	}
	str := func(us []*url.URL) string {
		out := ""
		for _, u := range us {
			out += u.Host + " "
		}
		return out
	}
	for last, want := range map[string]string{
		"tcp://a:1": "b:1 c:2 a:1 ",
		"tcp://b:1": "c:2 a:1 b:1 ",
		"ssl://c:2": "a:1 b:1 c:2 ",
		"tcp://x:9": "a:1 b:1 c:2 ", // not in the list: unchanged
	} {
		if got := str(rotateAfter(servers, last)); got != want {
			t.Errorf("rotateAfter(%s) = %s, want %s", last, got, want)
		}
	}
	if str(servers) != "a:1 b:1 c:2 " {
		t.Errorf("rotateAfter changed its argument: %s", str(servers))
	}
}

// Devices given the same gateways share their parsed URLs, each in its own order.
func TestBrokerURLsAreShared(t *testing.T) {
	a := brokerURLs([]string{"ssl://127.0.0.2:8883", "ssl://127.0.0.3:8883"})
	b := brokerURLs([]string{"ssl://127.0.0.3:8883", "ssl://127.0.0.2:8883"})
	if len(a) != 2 || len(b) != 2 {
		t.Fatalf("brokerURLs: %v, %v", a, b)
	}
	if a[0].Scheme != "ssl" || a[0].Host != "127.0.0.2:8883" || a[1].Host != "127.0.0.3:8883" {
		t.Errorf("brokerURLs parsed %v", a)
	}
	if a[0] != b[1] || a[1] != b[0] {
		t.Error("the same URL was parsed twice")
	}
}
