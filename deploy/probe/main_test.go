package main

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestCheck(t *testing.T) {
	ok := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/readyz" {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok"))
	}))
	defer ok.Close()
	// A port that was listening and is closed now refuses connections.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close()

	cases := []struct {
		target  string
		wantErr string
	}{
		{ok.URL + "/metrics", ""},
		{ok.URL + "/readyz", "503"},
		{"tcp://" + strings.TrimPrefix(ok.URL, "http://"), ""},
		{"tcp://" + closed, "connect"},
		{"http://" + closed + "/livez", "get"},
		{"tcp://", "host:port"},
		{"https://example.invalid/", "scheme"},
	}
	for _, c := range cases {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err := check(ctx, c.target)
		cancel()
		switch {
		case c.wantErr == "" && err != nil:
			t.Errorf("check(%s) = %v, want success", c.target, err)
		case c.wantErr != "" && (err == nil || !strings.Contains(err.Error(), c.wantErr)):
			t.Errorf("check(%s) = %v, want an error containing %q", c.target, err, c.wantErr)
		}
	}
}
