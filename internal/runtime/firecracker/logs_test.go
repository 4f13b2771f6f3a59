package firecracker

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"atelier/internal/logkeeper"
	"atelier/internal/runtime/firecracker/fctest"
)

const floodBytes = 16 << 20

// checkFlood boots a guest that writes 16 MiB to its serial console and
// checks what its log keeper leaves: at most max×(keep+1) bytes, no file
// over max, the newest lines kept. A second driver (a restarted manager)
// finds the keeper still running and Destroy removes every log file.
func checkFlood(t *testing.T, e *env, newDriver func() *Driver) {
	t.Helper()
	ctx := context.Background()
	const max, keep = 1 << 20, 2
	k, err := logkeeper.New(logkeeper.Options{MaxBytes: max, Keep: keep})
	if err != nil {
		t.Fatal(err)
	}
	e.opts.Logs = k
	e.d = newDriver()
	inst := e.inst(idA)
	start := time.Now()
	if err := e.d.Boot(ctx, inst); err != nil {
		t.Fatal(err)
	}
	log := filepath.Join(e.opts.LogDir, idA+".log")
	waitLog(t, log, fctest.ConsoleFloodDone)
	el := time.Since(start)
	t.Logf("16 MiB console flood absorbed in %v (%.0f MiB/s, boot included)", el, 16/el.Seconds())

	// The manager restarts: the keeper is not its child and keeps going.
	e.d = newDriver()
	if !k.Running(log) {
		t.Fatal("log keeper gone while the sandbox runs")
	}
	var total int64
	names, _ := filepath.Glob(log + "*")
	for _, n := range names {
		if strings.HasSuffix(n, ".keeper") {
			continue
		}
		st, err := os.Stat(n)
		if err != nil {
			t.Fatal(err)
		}
		if st.Size() > max {
			t.Errorf("%s holds %d bytes, over %d", n, st.Size(), max)
		}
		total += st.Size()
	}
	if total > max*(keep+1) {
		t.Errorf("logs hold %d bytes over %v, more than %d", total, names, max*(keep+1))
	}
	b, _ := os.ReadFile(log)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	last := ""
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.HasPrefix(lines[i], "console flood ") {
			last = lines[i]
			break
		}
	}
	// The flood's lines are 96 bytes; its last has number ⌈16 MiB/96⌉-1.
	wantLast := (floodBytes+95)/96 - 1
	if f := strings.Fields(last); len(f) < 3 || f[2] != fmtNum(wantLast) {
		t.Errorf("newest flood line %q, want number %d", last, wantLast)
	}
	if err := e.d.Destroy(ctx, idA); err != nil {
		t.Fatal(err)
	}
	if k.Running(log) {
		t.Error("log keeper survived Destroy")
	}
	if left, _ := filepath.Glob(log + "*"); len(left) != 0 {
		t.Errorf("Destroy left %v", left)
	}
}

func fmtNum(n int) string {
	s := strconv.Itoa(n)
	return strings.Repeat("0", max(0, 8-len(s))) + s
}

// TestConsoleFloodIsBounded: a guest flooding its serial console cannot
// fill the host's disk, and its log survives a manager restart.
func TestConsoleFloodIsBounded(t *testing.T) {
	extra := fctest.EnvConsoleFlood + "=" + strconv.Itoa(floodBytes)
	e := newEnv(t, extra)
	checkFlood(t, e, func() *Driver { return e.newDriver(extra) })
}

// TestJailedConsoleFloodIsBounded: the same through the jailer, whose
// Firecracker logs to a FIFO in its jail (never a host file).
func TestJailedConsoleFloodIsBounded(t *testing.T) {
	extra := fctest.EnvConsoleFlood + "=" + strconv.Itoa(floodBytes)
	e := newJailEnv(t, extra)
	checkFlood(t, e.env, func() *Driver { return e.newDriver(extra) })
}
