package process

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCheck(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "agent")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	r, err := New(Options{Command: []string{bin}, StateDir: filepath.Join(dir, "s"), SocketDir: filepath.Join(dir, "k")})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := r.Check(ctx); err != nil {
		t.Fatalf("healthy runtime: %v", err)
	}
	if err := os.Chmod(bin, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := r.Check(ctx); err == nil || !strings.Contains(err.Error(), "not an executable") {
		t.Errorf("agent binary not executable: %v", err)
	}
	if err := os.Remove(bin); err != nil {
		t.Fatal(err)
	}
	if err := r.Check(ctx); err == nil || !strings.Contains(err.Error(), "agent binary") {
		t.Errorf("agent binary removed: %v", err)
	}
}

// TestAgentEnv: the agent's environment is built from nothing but PATH and
// the sandbox's own paths; the manager's variables (its secrets) never
// reach it. The end-to-end check through exec is in internal/server.
func TestAgentEnv(t *testing.T) {
	t.Setenv("ATELIER_JWT_SECRET", "manager-secret")
	t.Setenv("PATH", "/opt/tools/bin:/usr/bin:/bin")
	env := agentEnv("abcdefabcdef", "/s/home", "/s/tmp")
	got := map[string]string{}
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		got[k] = v
		if strings.Contains(v, "manager-secret") {
			t.Errorf("manager secret in %s", kv)
		}
	}
	for k, want := range map[string]string{"PATH": "/opt/tools/bin:/usr/bin:/bin", "HOME": "/s/home", "TMPDIR": "/s/tmp",
		"LANG": "C.UTF-8", "TERM": "dumb", "ATELIER_SANDBOX_ID": "abcdefabcdef"} {
		if got[k] != want {
			t.Errorf("%s = %q, want %q", k, got[k], want)
		}
	}
	if got["USER"] == "" || got["USER"] != got["LOGNAME"] {
		t.Errorf("USER %q LOGNAME %q", got["USER"], got["LOGNAME"])
	}
	if len(got) != 8 {
		t.Errorf("unexpected variables: %v", env)
	}
}
