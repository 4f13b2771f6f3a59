package firecracker

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"atelier/internal/runtime/firecracker/fcapi"
	"atelier/internal/runtime/firecracker/fctest"
	"atelier/internal/sandbox"
)

// restoreInst is a sandbox restored onto its own disk and TAP.
func (e *env) restoreInst(id string) sandbox.Instance {
	e.t.Helper()
	inst := e.inst(id)
	inst.Disk = filepath.Join(e.root, id+".ext4")
	if err := os.WriteFile(inst.Disk, []byte("clone"), 0o600); err != nil {
		e.t.Fatal(err)
	}
	return inst
}

func TestSnapshotThenRestore(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	if err := e.d.Boot(ctx, e.inst(idA)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.d.Destroy(ctx, idA) })
	if err := e.d.Snapshot(ctx, idA, "base"); err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	state, mem := e.d.SnapshotPaths("base")
	if got := files(t, e.opts.SnapshotDir); !slices.Equal(got, []string{"base.mem", "base.snap"}) {
		t.Fatalf("snapshot dir = %v (want complete files only)", got)
	}
	recsA := e.records(idA)
	e.checkSpec(recsA)
	if got := calls(recsA)[len(recsA)-3:]; !slices.Equal(got, []string{"PATCH /vm", "PUT /snapshot/create", "PATCH /vm"}) {
		t.Fatalf("snapshot calls = %v", got)
	}
	if sc := body(t, recsA, "PUT", "/snapshot/create"); sc["snapshot_type"] != "Full" ||
		filepath.Dir(sc["snapshot_path"].(string)) != e.opts.SnapshotDir || filepath.Dir(sc["mem_file_path"].(string)) != e.opts.SnapshotDir {
		t.Errorf("snapshot/create = %v", sc)
	}
	cA := fcapi.New(filepath.Join(e.opts.SocketDir, idA+".sock"))
	if info, err := cA.DescribeInstance(ctx); err != nil || info.State != fcapi.StateRunning {
		t.Fatalf("source after snapshot: %+v %v (must be resumed)", info, err)
	}

	instB := e.restoreInst(idB)
	instB.Link = "tap-restored"
	if err := e.d.Restore(ctx, instB, "base"); err != nil {
		t.Fatalf("Restore: %v", err)
	}
	t.Cleanup(func() { _ = e.d.Destroy(ctx, idB) })
	recsB := e.records(idB)
	e.checkSpec(recsB)
	want := []string{"GET /", "PUT /snapshot/load", "GET /vm/config", "PATCH /drives/rootfs", "PATCH /vm", "GET /"}
	if got := calls(recsB); !slices.Equal(got, want) {
		t.Fatalf("restore calls =\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	load := body(t, recsB, "PUT", "/snapshot/load")
	mb, _ := load["mem_backend"].(map[string]any)
	ov, _ := load["network_overrides"].([]any)
	if load["snapshot_path"] != state || mb["backend_type"] != "File" || mb["backend_path"] != mem || len(ov) != 1 ||
		ov[0].(map[string]any)["host_dev_name"] != "tap-restored" || ov[0].(map[string]any)["iface_id"] != "eth0" {
		t.Errorf("snapshot/load = %v", load)
	}
	if pd := body(t, recsB, "PATCH", "/drives/rootfs"); pd["path_on_host"] != instB.Disk {
		t.Errorf("drive patch = %v, want the restored sandbox's disk", pd)
	}
	if st := body(t, recsB, "PATCH", "/vm"); st["state"] != "Resumed" {
		t.Errorf("vm patch = %v", st)
	}
	cB := fcapi.New(filepath.Join(e.opts.SocketDir, idB+".sock"))
	cfg, err := cB.GetExportVMConfig(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Drives[0].PathOnHost != instB.Disk || cfg.NetworkInterfaces[0].HostDevName != "tap-restored" {
		t.Errorf("restored config = %+v", cfg)
	}

	// Each sandbox has its own agent socket, answered by its own process.
	if e.d.AgentSocket(idA) == e.d.AgentSocket(idB) {
		t.Fatal("restored sandbox shares the source's agent socket")
	}
	if got := dialAgent(t, e.d.AgentSocket(idB), e.d.AgentPort()); got != idB {
		t.Errorf("B's agent socket answered for %q", got)
	}
	if got := dialAgent(t, e.d.AgentSocket(idA), e.d.AgentPort()); got != idA {
		t.Errorf("A's agent socket answered for %q after B's restore", got)
	}
	if exists(e.d.restoreDir(idB)) {
		t.Error("restore dir left behind")
	}

	// A restored sandbox stops, boots and snapshots like any other.
	if err := e.d.Stop(ctx, idB); err != nil {
		t.Fatal(err)
	}
	if got := files(t, e.opts.SocketDir); !slices.Equal(got, []string{idA + ".log.fifo", idA + ".pid", idA + ".sock", idA + ".vsock"}) {
		t.Errorf("socket dir after stopping B: %v", got)
	}
}

// Weak point 17: restores of one snapshot, running side by side with
// their still-running source, never share a path.
func TestConcurrentRestoresFromOneSnapshot(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	if err := e.d.Boot(ctx, e.inst(idA)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.d.Destroy(ctx, idA) })
	if err := e.d.Snapshot(ctx, idA, "base"); err != nil {
		t.Fatal(err)
	}
	targets := []sandbox.Instance{e.restoreInst(idB), e.restoreInst(idC)}
	targets[0].Link, targets[1].Link = "tap-b", "tap-c"
	var wg sync.WaitGroup
	errs := make([]error, len(targets))
	for i, inst := range targets {
		wg.Go(func() { errs[i] = e.d.Restore(ctx, inst, "base") })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("restore %s: %v", targets[i].ID, err)
		}
		t.Cleanup(func() { _ = e.d.Destroy(ctx, targets[i].ID) })
	}
	seen := map[string]bool{}
	for _, id := range []string{idA, idB, idC} {
		sock := e.d.AgentSocket(id)
		if seen[sock] {
			t.Fatalf("agent socket %s shared", sock)
		}
		seen[sock] = true
		if got := dialAgent(t, sock, e.d.AgentPort()); got != id {
			t.Errorf("agent socket of %s answered for %q", id, got)
		}
		if alive, _ := e.d.Alive(ctx, id); !alive {
			t.Errorf("%s not alive", id)
		}
	}
	for _, inst := range targets {
		cfg, err := fcapi.New(filepath.Join(e.opts.SocketDir, inst.ID+".sock")).GetExportVMConfig(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if cfg.Drives[0].PathOnHost != inst.Disk || cfg.NetworkInterfaces[0].HostDevName != inst.Link {
			t.Errorf("%s runs on %s/%s, want %s/%s", inst.ID, cfg.Drives[0].PathOnHost, cfg.NetworkInterfaces[0].HostDevName, inst.Disk, inst.Link)
		}
	}
}

func TestRestoreFailures(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	if err := e.d.Restore(ctx, e.restoreInst(idB), "none"); !errors.Is(err, ErrNoSnapshot) {
		t.Fatalf("restore of a missing snapshot = %v, want ErrNoSnapshot", err)
	}
	if err := e.d.Restore(ctx, e.restoreInst(idB), "../x"); err == nil {
		t.Fatal("restore accepted a path as snapshot name")
	}
	if err := e.d.Snapshot(ctx, idA, "base"); !errors.Is(err, ErrNotRunning) {
		t.Fatalf("snapshot of a stopped sandbox = %v, want ErrNotRunning", err)
	}

	if err := e.d.Boot(ctx, e.inst(idA)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.d.Destroy(ctx, idA) })
	if err := e.d.Snapshot(ctx, idA, "base"); err != nil {
		t.Fatal(err)
	}
	// A sandbox whose firecracker runs cannot be restored over.
	if err := e.d.Restore(ctx, e.inst(idA), "base"); !errors.Is(err, ErrRunning) {
		t.Fatalf("restore over a running sandbox = %v, want ErrRunning", err)
	}
	// Firecracker reopens the snapshot's disk path at load: without it the
	// load fails, and the failed restore leaves nothing behind.
	if err := os.Rename(e.disk, e.disk+".moved"); err != nil {
		t.Fatal(err)
	}
	err := e.d.Restore(ctx, e.restoreInst(idB), "base")
	if !fcapi.IsStatus(err, 400) || !strings.Contains(err.Error(), "load snapshot") {
		t.Fatalf("restore without the source disk = %v", err)
	}
	if alive, _ := e.d.Alive(ctx, idB); alive {
		t.Fatal("failed restore left a process")
	}
	for _, f := range files(t, e.opts.SocketDir) {
		if strings.HasPrefix(f, idB) {
			t.Errorf("failed restore left %s", f)
		}
	}
	if exists(filepath.Join(e.opts.LogDir, idB+".log")) {
		t.Error("failed restore left its log")
	}
}

// A failed snapshot leaves no partial files and the guest running.
func TestSnapshotFailureResumesGuest(t *testing.T) {
	e := newEnv(t, fctest.EnvFail+"=PUT /snapshot/create")
	ctx := context.Background()
	if err := e.d.Boot(ctx, e.inst(idA)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.d.Destroy(ctx, idA) })
	if err := e.d.Snapshot(ctx, idA, "base"); !fcapi.IsStatus(err, 400) {
		t.Fatalf("Snapshot = %v, want the injected 400", err)
	}
	if got := files(t, e.opts.SnapshotDir); len(got) != 0 {
		t.Errorf("snapshot dir after failure: %v", got)
	}
	info, err := fcapi.New(filepath.Join(e.opts.SocketDir, idA+".sock")).DescribeInstance(ctx)
	if err != nil || info.State != fcapi.StateRunning {
		t.Fatalf("guest after failed snapshot: %+v %v", info, err)
	}
}
