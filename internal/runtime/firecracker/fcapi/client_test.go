package fcapi_test

import (
	"context"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"atelier/internal/runtime/firecracker/fcapi"
	"atelier/internal/runtime/firecracker/fctest"
)

func newServer(t *testing.T) (*fctest.Server, *fcapi.Client, string) {
	t.Helper()
	dir := t.TempDir()
	for _, f := range []string{"vmlinux", "disk", "disk2"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	spec, err := fctest.LoadSpec("../testdata/firecracker-api-v1.14.1.yaml")
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "api.sock")
	srv := fctest.NewServer(spec, sock)
	srv.ID = "abc"
	srv.Dir = dir
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Close() })
	return srv, fcapi.New(sock), dir
}

// Every call the runtime makes, in a realistic order, is accepted by the
// spec-validating stand-in (which rejects unknown JSON names), and the
// answers decode into the client's types.
func TestClientCallsAreValid(t *testing.T) {
	srv, c, dir := newServer(t)
	ctx := context.Background()
	calls := []struct {
		name string
		call func() error
	}{
		{"logger", func() error {
			return c.PutLogger(ctx, fcapi.Logger{LogPath: filepath.Join(dir, "log"), Level: "Warning", ShowLevel: new(true)})
		}},
		{"machine", func() error {
			return c.PutMachineConfiguration(ctx, fcapi.MachineConfiguration{VcpuCount: 2, MemSizeMib: 256, TrackDirtyPages: new(true)})
		}},
		{"boot", func() error {
			return c.PutGuestBootSource(ctx, fcapi.BootSource{KernelImagePath: filepath.Join(dir, "vmlinux"), BootArgs: "console=ttyS0"})
		}},
		{"drive", func() error {
			return c.PutGuestDriveByID(ctx, fcapi.Drive{DriveID: "rootfs", PathOnHost: filepath.Join(dir, "disk"), IsRootDevice: true, IsReadOnly: new(false)})
		}},
		{"net", func() error {
			return c.PutGuestNetworkInterfaceByID(ctx, fcapi.NetworkInterface{IfaceID: "eth0", HostDevName: "tap0", GuestMAC: "06:00:ac:10:00:0a"})
		}},
		{"vsock", func() error { return c.PutGuestVsock(ctx, fcapi.Vsock{GuestCID: 3, UDSPath: "v.sock"}) }},
		{"start", func() error {
			return c.CreateSyncAction(ctx, fcapi.InstanceActionInfo{ActionType: fcapi.ActionInstanceStart})
		}},
		{"patch drive", func() error {
			return c.PatchGuestDriveByID(ctx, fcapi.PartialDrive{DriveID: "rootfs", PathOnHost: filepath.Join(dir, "disk2")})
		}},
		{"pause", func() error { return c.PatchVM(ctx, fcapi.Vm{State: fcapi.VMPaused}) }},
		{"snapshot", func() error {
			return c.CreateSnapshot(ctx, fcapi.SnapshotCreateParams{SnapshotPath: filepath.Join(dir, "s"), MemFilePath: filepath.Join(dir, "m"), SnapshotType: fcapi.SnapshotDiff})
		}},
		{"resume", func() error { return c.PatchVM(ctx, fcapi.Vm{State: fcapi.VMResumed}) }},
	}
	for _, cl := range calls {
		if err := cl.call(); err != nil {
			t.Fatalf("%s: %v", cl.name, err)
		}
	}
	info, err := c.DescribeInstance(ctx)
	if err != nil || info != (fcapi.InstanceInfo{AppName: "Firecracker", ID: "abc", State: fcapi.StateRunning, VMMVersion: "1.14.1"}) {
		t.Fatalf("DescribeInstance = %+v, %v", info, err)
	}
	cfg, err := c.GetExportVMConfig(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Vsock == nil || cfg.Vsock.UDSPath != "v.sock" || cfg.Vsock.GuestCID != 3 ||
		len(cfg.Drives) != 1 || cfg.Drives[0].PathOnHost != filepath.Join(dir, "disk2") ||
		len(cfg.NetworkInterfaces) != 1 || cfg.NetworkInterfaces[0].HostDevName != "tap0" ||
		cfg.MachineConfig == nil || cfg.MachineConfig.VcpuCount != 2 || cfg.BootSource == nil {
		t.Fatalf("vm config = %+v", cfg)
	}
	for _, r := range srv.Requests() {
		if !r.OK() {
			t.Errorf("%s %s rejected: %d %s", r.Method, r.Path, r.Status, r.Fault)
		}
	}

	// A fresh process accepts the load body as the client encodes it.
	_, c2, _ := newServer(t)
	err = c2.LoadSnapshot(ctx, fcapi.SnapshotLoadParams{
		SnapshotPath:     filepath.Join(dir, "s"),
		MemBackend:       &fcapi.MemoryBackend{BackendType: fcapi.BackendFile, BackendPath: filepath.Join(dir, "m")},
		ResumeVM:         true,
		NetworkOverrides: []fcapi.NetworkOverride{{IfaceID: "eth0", HostDevName: "tap9"}},
	})
	if err != nil {
		t.Fatalf("LoadSnapshot: %v", err)
	}
}

func TestAPIErrorCarriesStatusAndFault(t *testing.T) {
	_, c, _ := newServer(t)
	err := c.CreateSyncAction(context.Background(), fcapi.InstanceActionInfo{ActionType: fcapi.ActionInstanceStart})
	var apiErr *fcapi.APIError
	if !errors.As(err, &apiErr) {
		t.Fatalf("err = %v, want *APIError", err)
	}
	if apiErr.StatusCode != http.StatusBadRequest || apiErr.Method != "PUT" || apiErr.Path != "/actions" ||
		!strings.Contains(apiErr.FaultMessage, "without kernel configuration") {
		t.Fatalf("APIError = %+v", apiErr)
	}
	if !fcapi.IsStatus(err, 400) || fcapi.IsStatus(err, 500) {
		t.Error("IsStatus wrong")
	}
	if !strings.Contains(err.Error(), "status 400") || !strings.Contains(err.Error(), "without kernel configuration") {
		t.Errorf("message %q", err)
	}
}

func TestClientWithoutSocket(t *testing.T) {
	c := fcapi.New(filepath.Join(t.TempDir(), "none.sock"))
	_, err := c.DescribeInstance(context.Background())
	var apiErr *fcapi.APIError
	if err == nil || errors.As(err, &apiErr) || !strings.Contains(err.Error(), "GET /") {
		t.Fatalf("err = %v, want a transport error naming the call", err)
	}
}
