package container

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"atelier/internal/agent"
	"atelier/internal/storage/file"
)

// dfKB is the size of the guest's / in KiB, as its own df reports it.
func dfKB(t *testing.T, c *agent.Client) int64 {
	t.Helper()
	out := execOK(t, c, "df", "-k", "/")
	lines := strings.Split(out, "\n")
	f := strings.Fields(lines[len(lines)-1])
	if len(f) < 2 {
		t.Fatalf("df output %q", out)
	}
	n, err := strconv.ParseInt(f[1], 10, 64)
	if err != nil {
		t.Fatalf("df output %q: %v", out, err)
	}
	return n
}

// TestGrowDiskOnline: a runc sandbox on a file-driver volume. Grown by the
// driver while stopped, the next boot grows the filesystem (df inside shows
// it); grown while running, GrowDisk grows the mounted filesystem and df
// inside the running guest shows it. Needs root (and CAP_SYS_RESOURCE for
// the online part).
func TestGrowDiskOnline(t *testing.T) {
	e := newEnv(t, false)
	ctx := context.Background()
	fd := file.New(file.Config{StateDir: filepath.Join(e.dir, "vols"), MinFreePercent: 1,
		Log: slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err := fd.CreateImage(ctx, "grow-test", e.image, 0); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = fd.DeleteImage(ctx, "grow-test") })
	s := e.newSandbox()
	disk, err := fd.Clone(ctx, "grow-test", s.id)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = fd.Delete(ctx, s.id) })
	e.mu.Lock()
	e.disks = append(e.disks, disk)
	e.mu.Unlock()
	s.inst.Disk = disk
	c := e.boot(s)
	before := dfKB(t, c)
	vol, err := fd.Stat(ctx, "sandbox", s.id)
	if err != nil {
		t.Fatal(err)
	}
	const more = 64 << 20
	near := func(grew int64) bool { return grew >= (more>>10)*9/10 && grew <= more>>10 } // ext4 keeps some for metadata

	// Grown while stopped: the next boot grows the filesystem (offline).
	if err := e.d.Stop(ctx, s.id); err != nil {
		t.Fatal(err)
	}
	if err := e.d.GrowDisk(ctx, s.id); err == nil {
		t.Fatal("grow of a stopped sandbox succeeded")
	}
	if err := fd.Resize(ctx, s.id, vol.SizeBytes+more); err != nil {
		t.Fatal(err)
	}
	begin := time.Now()
	c = e.boot(s)
	took := time.Since(begin)
	after := dfKB(t, c)
	if !near(after - before) {
		t.Fatalf("df inside after a grow while stopped and a boot: %d KiB, was %d", after, before)
	}
	t.Logf("boot with an offline grow by 64 MiB: %d -> %d KiB, boot %s", before, after, took.Round(time.Millisecond))

	// Grown while running: GrowDisk grows the mounted filesystem, which
	// needs CAP_SYS_RESOURCE on the host.
	t.Run("online", func(t *testing.T) {
		if !hasCap(24) { // CAP_SYS_RESOURCE
			// A property of the host, not something .ci/run can install:
			// skipped even in strict mode.
			t.Skip("online ext4 grow needs CAP_SYS_RESOURCE, which this host withholds from root")
		}
		if err := fd.Resize(ctx, s.id, vol.SizeBytes+2*more); err != nil {
			t.Fatal(err)
		}
		begin = time.Now()
		if err := e.d.GrowDisk(ctx, s.id); err != nil {
			t.Fatalf("grow: %v\nlog:\n%s", err, e.log(s.id))
		}
		took = time.Since(begin)
		online := dfKB(t, c)
		if !near(online - after) {
			t.Fatalf("df inside after an online grow: %d KiB, was %d", online, after)
		}
		t.Logf("online grow by 64 MiB: %d -> %d KiB in %s", after, online, took.Round(time.Microsecond))
	})
}

// hasCap reports whether this process holds capability n.
func hasCap(n uint) bool {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return false
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "CapEff:"); ok {
			caps, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return err == nil && caps&(1<<n) != 0
		}
	}
	return false
}
