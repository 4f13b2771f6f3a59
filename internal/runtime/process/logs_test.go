package process

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"atelier/internal/agent"
	"atelier/internal/guest"
	"atelier/internal/logkeeper"
	"atelier/internal/sandbox"
)

func TestMain(m *testing.M) {
	logkeeper.MainIfKeeper()
	if len(os.Args) > 1 && os.Args[1] == "agent" {
		os.Exit(guest.Main(os.Args[2:]))
	}
	os.Exit(m.Run())
}

// TestAgentSurvivesADeadLogKeeper: the agent's output is the keeper's pipe;
// with the keeper gone, its log lines hit a closed pipe, which must not
// end the agent (and with it the sandbox).
func TestAgentSurvivesADeadLogKeeper(t *testing.T) {
	dir := t.TempDir()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	r.Close() // the keeper died
	sock := filepath.Join(dir, "a.sock")
	cmd := exec.Command(os.Args[0], "agent", "serve", "--vsock-port", "0", "--unix", sock, "--sandbox-id", "abcdefabcdef",
		"--file-root", dir, "--workdir", dir, "--log-dir", filepath.Join(dir, "log"),
		"--config-path", filepath.Join(dir, "config.json"), "--etc-dir", dir, "--image-manifest=", "--state-dir", filepath.Join(dir, "state"))
	cmd.Stdout, cmd.Stderr = w, w
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() { _ = cmd.Process.Kill(); <-exited })
	c := agent.New(agent.UnixDialer(sock))
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for {
		// It has logged "agent listening" into the dead pipe by now.
		if _, err := c.Health(ctx); err == nil {
			break
		}
		select {
		case err := <-exited:
			exited <- err
			t.Fatalf("agent died writing to a dead log pipe: %v", err)
		case <-ctx.Done():
			t.Fatal("agent never answered")
		case <-time.After(10 * time.Millisecond):
		}
	}
	select {
	case err := <-exited:
		exited <- err
		t.Fatalf("agent exited: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
}

// TestAgentOutputFloodIsBounded: a mock guest whose agent writes 16 MiB of
// output holds at most max×(keep+1) of disk, the newest lines kept; its
// keeper outlives the runtime (a manager restart), and Destroy removes the
// logs with the sandbox.
func TestAgentOutputFloodIsBounded(t *testing.T) {
	dir := t.TempDir()
	// The "agent": floods its stdout with numbered lines, then waits to be
	// stopped. Its command line carries --sandbox-id like the real one.
	bin := filepath.Join(dir, "agent")
	script := "#!/bin/sh\n" +
		"awk 'BEGIN { for (i = 0; i < 174763; i++) printf \"agent flood %08d %s\\n\", i, \"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\" }'\n" +
		"echo flood done\n" +
		"sleep 60\n"
	if err := os.WriteFile(bin, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	const limit, keep = 1 << 20, 2
	newRT := func() *Runtime {
		k, err := logkeeper.New(logkeeper.Options{MaxBytes: limit, Keep: keep})
		if err != nil {
			t.Fatal(err)
		}
		r, err := New(Options{Command: []string{bin}, StateDir: filepath.Join(dir, "s"), SocketDir: filepath.Join(dir, "k"),
			StopGrace: time.Second, Logs: k})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	r := newRT()
	ctx := context.Background()
	const id = "abcdefabcdef"
	start := time.Now()
	if err := r.Boot(ctx, sandbox.Instance{ID: id}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Destroy(context.Background(), id) })
	log := r.LogPath(id)
	deadline := time.Now().Add(30 * time.Second)
	for {
		b, _ := os.ReadFile(log)
		if strings.Contains(string(b), "flood done\n") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("flood never finished; log ends %q", b[max(0, len(b)-200):])
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("16 MiB of agent output absorbed in %v", time.Since(start))
	r = newRT() // the manager restarts
	if alive, _ := r.Alive(ctx, id); !alive {
		t.Fatal("agent gone after the restart")
	}
	if !r.o.Logs.Running(log) {
		t.Fatal("log keeper gone after the restart")
	}
	var total int64
	for _, f := range r.o.Logs.Files(log) {
		if st, err := os.Stat(f); err == nil {
			if st.Size() > limit {
				t.Errorf("%s: %d bytes", f, st.Size())
			}
			total += st.Size()
		}
	}
	if total > limit*(keep+1) {
		t.Errorf("logs hold %d bytes, more than %d", total, limit*(keep+1))
	}
	b, _ := os.ReadFile(log)
	if !strings.HasSuffix(string(b), "agent flood 00174762 "+strings.Repeat("x", 75)+"\nflood done\n") {
		t.Errorf("newest lines missing; log ends %q", b[max(0, len(b)-200):])
	}
	if err := r.Stop(ctx, id); err != nil {
		t.Fatal(err)
	}
	if r.o.Logs.Running(log) {
		t.Error("keeper outlived Stop")
	}
	if _, err := os.Stat(log); err != nil {
		t.Errorf("Stop removed the log: %v", err)
	}
	if err := r.Destroy(ctx, id); err != nil {
		t.Fatal(err)
	}
	if left, _ := filepath.Glob(log + "*"); len(left) != 0 {
		t.Errorf("Destroy left %v", left)
	}
}
