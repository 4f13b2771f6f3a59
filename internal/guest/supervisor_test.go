package guest

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"atelier/internal/agent"
)

// logsUntil polls a service's whole log until it contains want.
func logsUntil(t *testing.T, a *testAgent, kind, name, want string) string {
	t.Helper()
	var content string
	eventually(t, 10*time.Second, fmt.Sprintf("%q in %s log", want, name), func() bool {
		var lc *agent.LogChunk
		var err error
		if kind == agent.KindDev {
			lc, err = a.c.DevLogs(context.Background(), name, 0, 0)
		} else {
			lc, err = a.c.ServiceLogs(context.Background(), name, 0, 0)
		}
		if err != nil {
			t.Fatalf("logs: %v", err)
		}
		content = lc.Content
		return strings.Contains(content, want)
	})
	return content
}

func statusUntil(t *testing.T, a *testAgent, name, state string) *agent.ProcessStatus {
	t.Helper()
	var st *agent.ProcessStatus
	eventually(t, 15*time.Second, name+" to be "+state, func() bool {
		var err error
		st, err = a.c.Service(context.Background(), name)
		if err != nil {
			t.Fatalf("status: %v", err)
		}
		return st.State == state
	})
	return st
}

func TestServiceStartLogsStop(t *testing.T) {
	a := startAgent(t, nil)
	ctx := ctxT(t, 30*time.Second)
	st, err := a.c.StartService(ctx, "web", agent.ProcessSpec{Shell: "echo hello; echo oops >&2; exec sleep 300"})
	if err != nil {
		t.Fatal(err)
	}
	if st.State != agent.StateRunning || st.PID <= 0 || !st.Running || st.LogFile != filepath.Join(a.dir, "logs", "service-web.log") {
		t.Fatalf("start answered %+v", st)
	}
	logsUntil(t, a, agent.KindService, "web", "oops")

	// Offsets: a small read, then the rest from nextOffset.
	lc, err := a.c.ServiceLogs(ctx, "web", 0, 3)
	if err != nil || lc.Content != "hel" || lc.NextOffset != 3 || lc.Size != 11 {
		t.Fatalf("first chunk %+v %v", lc, err)
	}
	lc, err = a.c.ServiceLogs(ctx, "web", lc.NextOffset, 0)
	if err != nil || lc.Content != "lo\noops\n" || lc.NextOffset != 11 {
		t.Fatalf("second chunk %+v %v", lc, err)
	}
	lc, err = a.c.ServiceLogs(ctx, "web", 11, 0)
	if err != nil || lc.Content != "" || lc.NextOffset != 11 {
		t.Fatalf("tail chunk %+v %v", lc, err)
	}

	list, err := a.c.Services(ctx)
	if err != nil || len(list) != 1 || list[0].Name != "web" {
		t.Fatalf("list %+v %v", list, err)
	}
	pid := st.PID
	st, err = a.c.StopService(ctx, "web", 0)
	if err != nil {
		t.Fatal(err)
	}
	if st.State != agent.StateStopped || st.Running || st.Signal != "SIGTERM" || st.ExitCode == nil || *st.ExitCode != 143 {
		t.Fatalf("stop answered %+v", st)
	}
	if !processGone(pid) {
		t.Fatalf("pid %d still alive after stop", pid)
	}
	// Stopping again is a no-op; unknown names are 404.
	if st, err = a.c.StopService(ctx, "web", 0); err != nil || st.State != agent.StateStopped {
		t.Fatalf("second stop %+v %v", st, err)
	}
	_, err = a.c.StopService(ctx, "nope", 0)
	wantAgentError(t, err, 404, agent.CodeNotFound, "")
	_, err = a.c.ServiceLogs(ctx, "nope", 0, 0)
	wantAgentError(t, err, 404, agent.CodeNotFound, "")

	// A new start appends to the same log: offsets keep growing.
	if _, err := a.c.StartService(ctx, "web", agent.ProcessSpec{Shell: "echo again; exec sleep 300"}); err != nil {
		t.Fatal(err)
	}
	logsUntil(t, a, agent.KindService, "web", "again")
	lc, err = a.c.ServiceLogs(ctx, "web", 11, 0)
	if err != nil || !strings.Contains(lc.Content, "again") || lc.Offset != 11 {
		t.Fatalf("log after restart %+v %v", lc, err)
	}
}

func TestServiceStopGraceKillsIgnorer(t *testing.T) {
	a := startAgent(t, nil)
	ctx := ctxT(t, 30*time.Second)
	// The shell and its children ignore SIGTERM; only SIGKILL ends them.
	st, err := a.c.StartService(ctx, "stubborn", agent.ProcessSpec{
		Shell: `trap '' TERM; sleep 300 & echo "child $!"; while :; do sleep 0.05; done`,
	})
	if err != nil {
		t.Fatal(err)
	}
	out := logsUntil(t, a, agent.KindService, "stubborn", "child ")
	var child int
	if _, err := fmt.Sscanf(out[strings.Index(out, "child "):], "child %d", &child); err != nil {
		t.Fatalf("child pid in %q: %v", out, err)
	}
	begun := time.Now()
	st, err = a.c.StopService(ctx, "stubborn", 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if st.State != agent.StateStopped || st.Signal != "SIGKILL" {
		t.Fatalf("stop answered %+v", st)
	}
	if time.Since(begun) < 300*time.Millisecond {
		t.Fatalf("killed before the grace period")
	}
	eventually(t, 5*time.Second, "background child to die", func() bool { return processGone(child) })
}

func TestServiceRestartOnFailure(t *testing.T) {
	a := startAgent(t, nil)
	ctx := ctxT(t, 30*time.Second)
	_, err := a.c.StartService(ctx, "crashy", agent.ProcessSpec{
		Shell: "echo run; exit 3", Restart: agent.RestartOnFailure, MaxRestarts: 2,
	})
	if err != nil {
		t.Fatal(err)
	}
	st := statusUntil(t, a, "crashy", agent.StateFailed)
	if st.Restarts != 2 || st.ExitCode == nil || *st.ExitCode != 3 || st.LastError == "" {
		t.Fatalf("final status %+v", st)
	}
	lc, err := a.c.ServiceLogs(ctx, "crashy", 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(lc.Content, "run\n"); n != 3 {
		t.Fatalf("ran %d times, want 3; log:\n%s", n, lc.Content)
	}

	// on-failure does not restart a clean exit.
	if _, err := a.c.StartService(ctx, "oneshot", agent.ProcessSpec{Argv: []string{"true"}, Restart: agent.RestartOnFailure}); err != nil {
		t.Fatal(err)
	}
	st = statusUntil(t, a, "oneshot", agent.StateExited)
	if st.Restarts != 0 || *st.ExitCode != 0 {
		t.Fatalf("oneshot %+v", st)
	}
}

func TestServiceStartIsIdempotentRestartReplaces(t *testing.T) {
	a := startAgent(t, nil)
	ctx := ctxT(t, 30*time.Second)
	spec := agent.ProcessSpec{Argv: []string{"sleep", "300"}, StopGraceMs: 500}
	st1, err := a.c.StartService(ctx, "svc", spec)
	if err != nil {
		t.Fatal(err)
	}
	st2, err := a.c.StartService(ctx, "svc", spec)
	if err != nil || st2.PID != st1.PID {
		t.Fatalf("same-spec start: %+v %v (first pid %d)", st2, err, st1.PID)
	}
	_, err = a.c.StartService(ctx, "svc", agent.ProcessSpec{Argv: []string{"sleep", "301"}})
	wantAgentError(t, err, 409, agent.CodeAlreadyRunning, "")

	st3, err := a.c.RestartService(ctx, "svc", &agent.ProcessSpec{Argv: []string{"sleep", "302"}})
	if err != nil || st3.PID == st1.PID || st3.State != agent.StateRunning {
		t.Fatalf("restart %+v %v", st3, err)
	}
	if !processGone(st1.PID) {
		t.Fatal("old process survived restart")
	}
	st4, err := a.c.RestartService(ctx, "svc", nil)
	if err != nil || st4.PID == st3.PID || strings.Join(st4.Argv, " ") != "sleep 302" {
		t.Fatalf("restart with the same spec %+v %v", st4, err)
	}

	_, err = a.c.StartService(ctx, "Bad_Name", spec)
	wantAgentError(t, err, 400, agent.CodeBadRequest, "name")
	_, err = a.c.StartService(ctx, "x", agent.ProcessSpec{Argv: []string{"true"}, Restart: "sometimes"})
	wantAgentError(t, err, 400, agent.CodeBadRequest, "restart")
	_, err = a.c.StartService(ctx, "x", agent.ProcessSpec{})
	wantAgentError(t, err, 400, agent.CodeBadRequest, "argv")
}

func TestDevCommandReportsPort(t *testing.T) {
	a := startAgent(t, nil)
	ctx := ctxT(t, 30*time.Second)
	st, err := a.c.StartDev(ctx, "web", agent.ProcessSpec{Shell: `echo "port=$PORT"; exec sleep 300`, Port: 18080})
	if err != nil {
		t.Fatal(err)
	}
	if st.Kind != agent.KindDev || st.Port != 18080 || st.LogFile != filepath.Join(a.dir, "logs", "dev-web.log") {
		t.Fatalf("dev start %+v", st)
	}
	logsUntil(t, a, agent.KindDev, "web", "port=18080")
	devs, err := a.c.DevCommands(ctx)
	if err != nil || len(devs) != 1 || devs[0].Port != 18080 || devs[0].State != agent.StateRunning {
		t.Fatalf("dev list %+v %v", devs, err)
	}
	if svcs, err := a.c.Services(ctx); err != nil || len(svcs) != 0 {
		t.Fatalf("dev command leaked into services: %+v %v", svcs, err)
	}
	// Same name, other namespace: independent.
	if _, err := a.c.Service(ctx, "web"); err == nil {
		t.Fatal("service web exists")
	}
	if st, err := a.c.StopDev(ctx, "web", 0); err != nil || st.State != agent.StateStopped {
		t.Fatalf("dev stop %+v %v", st, err)
	}
	_, err = a.c.StartDev(ctx, "-web", agent.ProcessSpec{Argv: []string{"true"}})
	wantAgentError(t, err, 400, agent.CodeBadRequest, "name")
	_, err = a.c.StartDev(ctx, "web", agent.ProcessSpec{Argv: []string{"true"}, Port: 70000})
	wantAgentError(t, err, 400, agent.CodeBadRequest, "port")
}

func TestLogRingOffsets(t *testing.T) {
	lr, err := openLogRing(filepath.Join(t.TempDir(), "x.log"), 8192) // 4 KiB per file
	if err != nil {
		t.Fatal(err)
	}
	defer lr.close()
	var all bytes.Buffer
	for i := range 1000 {
		line := fmt.Sprintf("line %04d\n", i) // 10 bytes
		all.WriteString(line)
		if _, err := lr.Write([]byte(line)); err != nil {
			t.Fatal(err)
		}
	}
	total := int64(all.Len())
	tests := []struct {
		name       string
		off, limit int64
		wantOff    int64
		wantLen    int64
	}{
		{"rotated away jumps to oldest", 0, 100, -1, 100},
		{"tail", total - 25, 100, total - 25, 25},
		{"at end", total, 100, total, 0},
		{"past end clamps", total + 50, 100, total, 0},
		{"spans both files", -2, 1 << 20, -2, -2},
	}
	b, oldest, _, end, err := lr.read(0, 1<<20)
	if err != nil || end != total {
		t.Fatalf("read all: end %d want %d, %v", end, total, err)
	}
	if int64(len(b)) > 8192 || oldest == 0 || !bytes.Equal(b, all.Bytes()[oldest:]) {
		t.Fatalf("retained %d bytes from %d; not the log's tail", len(b), oldest)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			off, wantOff, wantLen := tt.off, tt.wantOff, tt.wantLen
			if off == -2 {
				off = oldest
			}
			if wantOff == -1 || wantOff == -2 {
				wantOff = oldest
			}
			if wantLen == -2 {
				wantLen = total - oldest
			}
			got, from, next, _, err := lr.read(off, tt.limit)
			if err != nil {
				t.Fatal(err)
			}
			if from != wantOff || int64(len(got)) != wantLen || next != from+int64(len(got)) {
				t.Fatalf("read(%d,%d) = %d bytes from %d next %d; want %d bytes from %d", off, tt.limit, len(got), from, next, wantLen, wantOff)
			}
			if !bytes.Equal(got, all.Bytes()[from:next]) {
				t.Fatalf("content mismatch at %d", from)
			}
		})
	}
}

func TestServiceAlwaysRestartsAndSpawnFailure(t *testing.T) {
	a := startAgent(t, nil)
	ctx := ctxT(t, 30*time.Second)
	if _, err := a.c.StartService(ctx, "ticker", agent.ProcessSpec{Shell: "echo tick", Restart: agent.RestartAlways, MaxRestarts: 1}); err != nil {
		t.Fatal(err)
	}
	st := statusUntil(t, a, "ticker", agent.StateFailed)
	if st.Restarts != 1 || *st.ExitCode != 0 {
		t.Fatalf("always: %+v", st)
	}

	garbage := filepath.Join(a.dir, "garbage")
	if err := os.WriteFile(garbage, []byte("\x00\x01\x02\x03"), 0o755); err != nil {
		t.Fatal(err)
	}
	_, err := a.c.StartService(ctx, "broken", agent.ProcessSpec{Argv: []string{garbage}})
	wantAgentError(t, err, 400, agent.CodeStartFailed, "argv")
	st, err = a.c.Service(ctx, "broken")
	if err != nil || st.State != agent.StateFailed || st.LastError == "" {
		t.Fatalf("broken status %+v %v", st, err)
	}
}
