package pool_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"atelier/internal/config"
	"atelier/internal/events"
	"atelier/internal/metrics"
	netmock "atelier/internal/network/mock"
	rtmock "atelier/internal/runtime/mock"
	"atelier/internal/sandbox"
	"atelier/internal/storage"
	"atelier/internal/storage/pool"
	"atelier/internal/store"
)

// fakeLVM answers the exact LVM commands the lvm driver and the thin pool
// probe run, over an in-memory volume group: no device-mapper here, so
// LVM is only ever a command runner (the lvm package's tests pin every
// argv; this one keeps state across a manager's whole life). Any other
// command fails the test.
type fakeLVM struct {
	t   *testing.T
	mu  sync.Mutex
	vg  bool             // sandbox-vg with its thin pool exists
	lvs map[string]int64 // LV name -> size
	ran []string
}

const (
	lvsBin      = "/usr/sbin/lvs"
	lvcreateBin = "/usr/sbin/lvcreate"
	lvremoveBin = "/usr/sbin/lvremove"
	poolSize    = int64(100) << 30
)

var reportArgs = []string{"--reportformat", "json", "--units", "b", "--nosuffix",
	"-o", "lv_name,lv_size,data_percent,metadata_percent,origin,lv_attr", "sandbox-vg"}

func (f *fakeLVM) fail(argv []string, stderr string) error {
	return &storage.ExecError{Argv: argv, Code: 5, Stderr: stderr, Err: errors.New("exit status 5")}
}

func (f *fakeLVM) Run(_ context.Context, name string, args ...string) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	argv := append([]string{name}, args...)
	f.ran = append(f.ran, strings.Join(argv, " "))
	noVG := `  Volume group "sandbox-vg" not found`
	switch {
	case name == lvsBin && slices.Equal(args, []string{"--noheadings", "-o", "lv_name", "sandbox-vg/thin-pool"}):
		if !f.vg {
			return nil, f.fail(argv, noVG)
		}
		return []byte("  thin-pool\n"), nil
	case name == lvsBin && slices.Equal(args, reportArgs):
		if !f.vg {
			return nil, f.fail(argv, noVG)
		}
		type row struct {
			Name string `json:"lv_name"`
			Size string `json:"lv_size"`
			Data string `json:"data_percent"`
			Meta string `json:"metadata_percent"`
			Orig string `json:"origin"`
			Attr string `json:"lv_attr"`
		}
		rows := []row{{"thin-pool", fmt.Sprint(poolSize), "1.00", "1.00", "", "twi-aotz--"}}
		for n, size := range f.lvs {
			rows = append(rows, row{n, fmt.Sprint(size), "1.00", "", "", "Vwi-a-tz--"})
		}
		b, _ := json.Marshal(map[string]any{"report": []any{map[string]any{"lv": rows}}})
		return b, nil
	case name == lvcreateBin && len(args) == 5 && args[0] == "-s" && args[1] == "-kn" && args[2] == "-n" &&
		strings.HasPrefix(args[4], "sandbox-vg/"):
		origin, ok := f.lvs[strings.TrimPrefix(args[4], "sandbox-vg/")]
		if !ok || !f.vg {
			return nil, f.fail(argv, "  Failed to find logical volume "+args[4])
		}
		f.lvs[args[3]] = origin
		return nil, nil
	case name == lvremoveBin && len(args) == 2 && args[0] == "-f" && strings.HasPrefix(args[1], "sandbox-vg/"):
		lv := strings.TrimPrefix(args[1], "sandbox-vg/")
		if _, ok := f.lvs[lv]; !ok || !f.vg {
			return nil, f.fail(argv, fmt.Sprintf("  Failed to find logical volume %q", args[1]))
		}
		delete(f.lvs, lv)
		return nil, nil
	}
	f.t.Errorf("unexpected command %q", argv)
	return nil, errors.New("unexpected command")
}

func (f *fakeLVM) has(lv string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, ok := f.lvs[lv]
	return ok
}

func (f *fakeLVM) count(prefix string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, c := range f.ran {
		if strings.HasPrefix(c, prefix) {
			n++
		}
	}
	return n
}

// manager is one life of the manager over a shared store and host.
type manager struct {
	svc *sandbox.Service
	set *pool.Set
}

func startManager(t *testing.T, cfg *config.Config, st *store.Store, r pool.Runner, rt *rtmock.Runtime, nw *netmock.Network) manager {
	t.Helper()
	log := slog.New(slog.DiscardHandler)
	set, _, err := pool.OpenSet(context.Background(), cfg, r, log)
	if err != nil {
		t.Fatal(err)
	}
	svc := sandbox.New(cfg, st, events.New(st, log), metrics.New(), sandbox.Drivers{Runtime: rt, Network: nw, Volumes: set}, log)
	svc.SetInventory(sandbox.Inventory{
		Runtimes: func(context.Context) ([]string, error) { return rt.Instances(), nil },
		Links:    func(context.Context) ([]string, error) { return nw.LinkIDs(), nil },
		Volumes: func(ctx context.Context) ([]sandbox.HostVolume, error) {
			vs, err := set.List(ctx)
			var out []sandbox.HostVolume
			for _, v := range vs {
				if v.Kind == storage.KindSandbox {
					out = append(out, sandbox.HostVolume{ID: v.ID, Driver: v.Driver, SizeBytes: v.SizeBytes})
				}
			}
			return out, err
		},
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); svc.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return manager{svc: svc, set: set}
}

func (m manager) running(t *testing.T) store.Sandbox {
	t.Helper()
	ctx := context.Background()
	sb, err := m.svc.Create(ctx, sandbox.CreateRequest{OwnerID: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	if sb, err = m.svc.Wait(ctx, sb.ID); err != nil || sb.Status != store.StatusRunning {
		t.Fatalf("create: %+v (%s), %v", sb.Status, sb.Error, err)
	}
	return sb
}

// TestDriverChangeBetweenRestartsLeavesNoVolumeBehind: a manager makes
// file volumes, the operator sets up LVM, and the next manager chooses LVM
// for new volumes. The file volumes stay visible: a live sandbox keeps
// using its own disk, a destroyed sandbox's file volume is deleted, and
// the reconciler finds and removes a file volume whose sandbox is gone.
func TestDriverChangeBetweenRestartsLeavesNoVolumeBehind(t *testing.T) {
	ctx := context.Background()
	state := t.TempDir()
	for _, d := range []string{"images", "overlays", "prebuilds"} {
		if err := os.MkdirAll(filepath.Join(state, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	const imgSize = 16 << 20
	img, err := os.Create(filepath.Join(state, "images", "dev-base.ext4"))
	if err != nil {
		t.Fatal(err)
	}
	if err := errors.Join(img.Truncate(imgSize), img.Close()); err != nil {
		t.Fatal(err)
	}
	cfg := config.Default()
	cfg.Server.Mode = config.ModeMock
	cfg.Server.DataDir = t.TempDir()
	cfg.Sandbox.StateDir = state
	cfg.Setup.Storage.Method = "file"
	st, err := store.Open(ctx, cfg.Server.DataDir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	lvm := &fakeLVM{t: t, lvs: map[string]int64{}}
	rt, nw := rtmock.New(), netmock.New()
	overlay := func(id string) string { return filepath.Join(state, "overlays", id+".ext4") }

	// First life: the file driver.
	m1 := startManager(t, cfg, st, lvm, rt, nw)
	if got := m1.set.Drivers(); !slices.Equal(got, []string{storage.DriverFile}) {
		t.Fatalf("drivers present: %v", got)
	}
	live, stopped, doomed, orphan := m1.running(t), m1.running(t), m1.running(t), m1.running(t)
	for _, sb := range []store.Sandbox{live, stopped, doomed, orphan} {
		if sb.VolumeDriver != storage.DriverFile || sb.DiskBytes != imgSize {
			t.Fatalf("%s: driver %q disk %d, want file and %d", sb.ID, sb.VolumeDriver, sb.DiskBytes, imgSize)
		}
	}
	if _, err := m1.svc.Stop(ctx, stopped.ID); err != nil {
		t.Fatal(err)
	}
	// The user's work on the stopped sandbox's disk.
	if err := os.WriteFile(overlay(stopped.ID), []byte("user data"), 0o600); err != nil {
		t.Fatal(err)
	}
	// A crash left the orphan's volume without its row.
	if err := st.DeleteSandbox(ctx, orphan.ID); err != nil {
		t.Fatal(err)
	}
	if err := rt.Destroy(ctx, orphan.ID); err != nil {
		t.Fatal(err)
	}
	if err := nw.Detach(ctx, orphan.ID); err != nil {
		t.Fatal(err)
	}
	if err := st.ReleaseLease(ctx, orphan.ID); err != nil {
		t.Fatal(err)
	}

	// The operator sets up LVM; the next manager picks it for new volumes.
	lvm.mu.Lock()
	lvm.vg, lvm.lvs["image-dev-base"] = true, 10<<30
	lvm.mu.Unlock()
	cfg2 := *cfg
	cfg2.Setup.Storage.Method = "lvm"
	m2 := startManager(t, &cfg2, st, lvm, rt, nw)
	if got := m2.set.Drivers(); !slices.Equal(got, []string{storage.DriverLVM, storage.DriverFile}) {
		t.Fatalf("drivers present after the change: %v", got)
	}
	// The System page sees both pools, the one for new volumes first.
	pools, err := m2.set.Usage(ctx)
	if err != nil || len(pools) != 2 || pools[0].Driver != storage.DriverLVM || pools[0].TotalBytes != poolSize ||
		pools[0].VirtualBytes < 10<<30 || pools[1].Driver != storage.DriverFile || pools[1].TotalBytes <= 0 || pools[1].Volumes < 4 {
		t.Fatalf("pools: %+v, %v", pools, err)
	}
	rep, err := m2.svc.Reconcile(ctx, true)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Volumes != 1 {
		t.Fatalf("reconcile removed %d volumes, want the orphan's: %+v", rep.Volumes, rep)
	}
	if _, err := os.Stat(overlay(orphan.ID)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("orphan file volume left: %v", err)
	}
	for _, sb := range []store.Sandbox{live, stopped, doomed} {
		if _, err := os.Stat(overlay(sb.ID)); err != nil {
			t.Fatalf("volume of %s (a live sandbox) removed: %v", sb.ID, err)
		}
	}

	// Destroying a sandbox whose volume is a file deletes that file.
	if err := m2.svc.Destroy(ctx, doomed.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(overlay(doomed.ID)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("destroyed sandbox's file volume left: %v", err)
	}

	// The stopped sandbox starts on its own disk, not a fresh LVM clone.
	got, err := m2.svc.Start(ctx, stopped.ID)
	if err != nil {
		t.Fatal(err)
	}
	if inst, _ := rt.Instance(stopped.ID); inst.Disk != overlay(stopped.ID) || got.VolumeDriver != storage.DriverFile {
		t.Fatalf("started on disk %q (driver %q), want %s", inst.Disk, got.VolumeDriver, overlay(stopped.ID))
	}
	if b, err := os.ReadFile(overlay(stopped.ID)); err != nil || string(b) != "user data" {
		t.Fatalf("user data: %q, %v", b, err)
	}
	if lvm.has("sandbox-"+stopped.ID) || lvm.count(lvcreateBin) != 0 {
		t.Fatalf("a second volume was made for %s: %v", stopped.ID, lvm.ran)
	}

	// New sandboxes go to LVM, with the image's size.
	fresh := m2.running(t)
	if fresh.VolumeDriver != storage.DriverLVM || fresh.DiskBytes != 10<<30 || !lvm.has("sandbox-"+fresh.ID) {
		t.Fatalf("new sandbox: driver %q disk %d", fresh.VolumeDriver, fresh.DiskBytes)
	}
	if _, err := os.Stat(overlay(fresh.ID)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("new sandbox has a file volume too: %v", err)
	}
	if err := m2.svc.Destroy(ctx, fresh.ID); err != nil {
		t.Fatal(err)
	}
	if lvm.has("sandbox-" + fresh.ID) {
		t.Fatal("destroyed sandbox's LV left")
	}
	if rep, err := m2.svc.Reconcile(ctx, false); err != nil || len(rep.Fixes) != 0 || rep.Volumes != 0 {
		t.Fatalf("second pass: %+v, %v", rep, err)
	}
}

// TestSetRefusesAMissingDriver: when the pool holding a sandbox's volume
// is not present (a thin pool not activated yet), starting it fails
// instead of giving it an empty disk on the other driver.
func TestSetRefusesAMissingDriver(t *testing.T) {
	ctx := context.Background()
	cfg := config.Default()
	cfg.Sandbox.StateDir = t.TempDir()
	cfg.Setup.Storage.Method = "file"
	lvm := &fakeLVM{t: t, lvs: map[string]int64{}}
	set, _, err := pool.OpenSet(ctx, cfg, lvm, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := set.CloneOn(ctx, storage.DriverLVM, "dev-base", "abcdefghijkl"); !errors.Is(err, pool.ErrUnavailable) {
		t.Fatalf("clone on an absent thin pool: %v, want ErrUnavailable", err)
	}
	if _, err := set.ImageSize(ctx, "dev-base"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("size of a missing image: %v", err)
	}
	// The pool appears: the set opens it when a call needs it.
	lvm.mu.Lock()
	lvm.vg, lvm.lvs["image-dev-base"], lvm.lvs["sandbox-abcdefghijkl"] = true, 1<<30, 1<<30
	lvm.mu.Unlock()
	path, used, err := set.CloneOn(ctx, storage.DriverLVM, "dev-base", "abcdefghijkl")
	if err != nil || used != storage.DriverLVM || path != "/dev/sandbox-vg/sandbox-abcdefghijkl" {
		t.Fatalf("clone once the pool is back: %q %q %v", path, used, err)
	}
	// A row that names no driver finds its volume wherever it is.
	path, used, err = set.CloneOn(ctx, "", "dev-base", "abcdefghijkl")
	if err != nil || used != storage.DriverLVM || path != "/dev/sandbox-vg/sandbox-abcdefghijkl" {
		t.Fatalf("clone with no driver named: %q %q %v", path, used, err)
	}
	if lvm.count(lvcreateBin) != 0 {
		t.Fatalf("existing volume cloned again: %v", lvm.ran)
	}
	if set.Driver() != storage.DriverFile {
		t.Fatalf("new volumes go to %s, want the driver chosen at start-up", set.Driver())
	}
}
