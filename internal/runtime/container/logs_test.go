package container

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"atelier/internal/logkeeper"
)

// TestConsoleFloodIsBounded: a guest that writes 16 MiB to its console
// (PID 1's stdout, the keeper's pipe) leaves at most max×(keep+1) bytes on
// the host, the newest lines kept; the keeper outlives a manager restart
// (a new driver) and Destroy removes every log file.
func TestConsoleFloodIsBounded(t *testing.T) {
	requireRoot(t)
	const limit, keep = 1 << 20, 2
	k, err := logkeeper.New(logkeeper.Options{MaxBytes: limit, Keep: keep})
	if err != nil {
		t.Fatal(err)
	}
	// Without a user namespace guest root may open PID 1's stdout through
	// /proc; in one, the pipe belongs to an unmapped host uid and only the
	// agent itself writes to it.
	e := newEnv(t, true, func(o *Options) { o.Logs, o.UserNS = k, UserNSOff })
	s := e.newSandbox()
	c := e.boot(s)
	ctx := context.Background()
	const lines = 172961 // 97-byte lines: 16 MiB
	start := time.Now()
	execOK(t, c, "sh", "-c", `awk 'BEGIN { for (i = 0; i < `+itoa(lines)+`; i++) printf "guest flood %08d %s\n", i, "`+
		strings.Repeat("x", 75)+`" }' > /proc/1/fd/1; echo flood done > /proc/1/fd/1`)
	log := e.d.LogPath(s.id)
	deadline := time.Now().Add(30 * time.Second)
	for {
		b, _ := os.ReadFile(log)
		if strings.HasSuffix(string(b), "flood done\n") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("flood never reached the log; it ends %q", b[max(0, len(b)-200):])
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("16 MiB guest console flood written and absorbed in %v", time.Since(start))

	// The manager restarts: a new driver on the same directories.
	d2, err := New(e.d.opts)
	if err != nil {
		t.Fatal(err)
	}
	e.d = d2
	if !k.Running(log) {
		t.Fatal("log keeper gone after the manager restart")
	}
	var total int64
	for _, f := range k.Files(log) {
		if st, err := os.Stat(f); err == nil {
			if st.Size() > limit {
				t.Errorf("%s holds %d bytes", f, st.Size())
			}
			total += st.Size()
		}
	}
	if total > limit*(keep+1) {
		t.Errorf("logs hold %d bytes, more than %d", total, limit*(keep+1))
	}
	b, _ := os.ReadFile(log)
	if want := "guest flood " + pad8(lines-1) + " " + strings.Repeat("x", 75) + "\nflood done\n"; !strings.HasSuffix(string(b), want) {
		t.Errorf("newest lines missing; log ends %q", b[max(0, len(b)-200):])
	}
	if err := e.d.Destroy(ctx, s.id); err != nil {
		t.Fatal(err)
	}
	if k.Running(log) {
		t.Error("keeper survived Destroy")
	}
	if left, _ := filepath.Glob(log + "*"); len(left) != 0 {
		t.Errorf("Destroy left %v", left)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

func pad8(n int) string {
	s := strconv.Itoa(n)
	return strings.Repeat("0", max(0, 8-len(s))) + s
}
