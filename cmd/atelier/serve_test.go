package main

import (
	"os"
	"strings"
	"testing"
)

// TestServeInsecureMockListenAny: the flag is the explicit opt-in that lets
// mock mode listen beyond loopback, and means nothing in production.
func TestServeInsecureMockListenAny(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(dir+"/config.json", []byte("{}"), 0o600); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{
		"ATELIER_CONFIG": dir + "/config.json", "ATELIER_SERVER_MODE": "mock", "ATELIER_DATA_DIR": dir + "/data",
		"ATELIER_STATE_DIR": dir + "/state", "ATELIER_SERVER_HOST": "192.0.2.10", "ATELIER_SERVER_PORT": "1",
	}
	// Without it: refused before anything is bound, naming the key and the ways to opt in.
	_, err := run(t, env, "serve", "--no-socket")
	if err == nil || !strings.Contains(err.Error(), "ATELIER_SERVER_HOST") || !strings.Contains(err.Error(), "--insecure-mock-listen-any") {
		t.Fatalf("mock mode on 192.0.2.10 without the opt-in: %v", err)
	}
	// With it: validation passes and the manager tries that address (not this machine's).
	_, err = run(t, env, "serve", "--no-socket", "--insecure-mock-listen-any")
	if err == nil || !strings.Contains(err.Error(), "listen on 192.0.2.10:1") {
		t.Fatalf("mock mode on 192.0.2.10 with the opt-in: %v", err)
	}
	env["ATELIER_SERVER_MODE"] = "production"
	_, err = run(t, env, "serve", "--insecure-mock-listen-any")
	if err == nil || !strings.Contains(err.Error(), "mock mode only") {
		t.Fatalf("the flag in production: %v", err)
	}
}
