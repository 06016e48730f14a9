package channel

import "testing"

func TestRedactURL(t *testing.T) {
	got := RedactURL("tls://gw:s3cret@n1:4222, nats://n2:4222,nats://u:p@n3:4222")
	want := "tls://gw:xxxxx@n1:4222, nats://n2:4222,nats://u:xxxxx@n3:4222"
	if got != want {
		t.Fatalf("RedactURL = %q, want %q", got, want)
	}
	if !anyTLS("nats://a:1, tls://b:2") || anyTLS("nats://a:1,nats://b:2") {
		t.Fatal("anyTLS")
	}
}
