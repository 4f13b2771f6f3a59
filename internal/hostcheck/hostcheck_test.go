package hostcheck

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"atelier/internal/config"
)

func TestKVMWorks(t *testing.T) {
	dir := t.TempDir()
	plain := filepath.Join(dir, "kvm")
	if err := os.WriteFile(plain, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		path, want string
	}{
		{filepath.Join(dir, "missing"), "does not exist"},
		{plain, "does not answer KVM_GET_API_VERSION"},
		{"/dev/null", "does not answer KVM_GET_API_VERSION"},
	} {
		ok, detail := KVMWorks(tc.path)
		if ok || !strings.Contains(detail, tc.want) {
			t.Errorf("KVMWorks(%s) = %v, %q; want false, %q", tc.path, ok, detail, tc.want)
		}
	}
	// The real device, where there is one; no test needs it.
	if _, err := os.Stat("/dev/kvm"); err == nil {
		ok, detail := KVMWorks("/dev/kvm")
		t.Logf("/dev/kvm: %v, %s", ok, detail)
	}
}

func TestRuntimeChoice(t *testing.T) {
	cfg := testConfig(t)
	h := quietHost(t)
	h.KVM = filepath.Join(t.TempDir(), "kvm")
	rep := Run(context.Background(), cfg, h)
	if rep.Runtime != "container" || !strings.Contains(rep.RuntimeReason, "does not exist") {
		t.Fatalf("runtime %q (%s)", rep.Runtime, rep.RuntimeReason)
	}
	if r := find(t, rep, "kvm"); r.Status != Info {
		t.Fatalf("kvm check for the container runtime: %+v", r)
	}
	h.Runtime = "firecracker"
	rep = Run(context.Background(), cfg, h)
	if r := find(t, rep, "kvm"); r.Status != Fail {
		t.Fatalf("firecracker without KVM: %+v", r)
	}
	if r := find(t, rep, "firecracker"); r.Status != Fail || !strings.Contains(r.Fix, "firecracker-v1.14.1-x86_64.tgz") {
		t.Fatalf("firecracker binaries: %+v", r)
	}
	if rep.OK() {
		t.Fatal("report with failures is OK")
	}
}

func TestParseReleaseAndKernel(t *testing.T) {
	for _, tc := range []struct {
		rel     string
		runtime string
		want    Status
	}{
		{"6.1.0-56-amd64", "firecracker", OK},
		{"5.10.0-30-amd64", "firecracker", OK},
		{"5.11.3", "container", Warn},
		{"5.12.0", "container", OK},
		{"4.19.0-26-amd64", "firecracker", Fail},
		{"weird", "container", Warn},
	} {
		if got := kernelCheck(tc.rel, nil, tc.runtime); got.Status != tc.want {
			t.Errorf("kernel %s (%s) = %+v, want %s", tc.rel, tc.runtime, got, tc.want)
		}
	}
}

func TestPorts(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	port := busy.Addr().(*net.TCPAddr).Port
	r := portCheck("/proc", "127.0.0.1", Port{Key: "domain.httpPort", Env: "ATELIER_HTTP_PORT", Port: port, What: "the edge"})
	if r.Status != Fail || !strings.Contains(r.Detail, "(pid ") || !strings.Contains(r.Fix, "ATELIER_HTTP_PORT") {
		t.Fatalf("busy port: %+v", r)
	}
	owners := PortOwners("/proc", port)
	if len(owners) != 1 || owners[0].PID != os.Getpid() {
		t.Fatalf("owners of %d = %+v, want this process %d", port, owners, os.Getpid())
	}
	busy.Close()
	if r := portCheck("/proc", "127.0.0.1", Port{Port: port, What: "the edge"}); r.Status != OK {
		t.Fatalf("free port: %+v", r)
	}
}

func TestDNS(t *testing.T) {
	cfg := testConfig(t)
	cfg.Domain.BaseDomain = "example.test"
	cfg.Domain.Dashboard = "sandbox.example.test"
	cfg.Domain.SSH.Hostname = "ssh.example.test"
	h := quietHost(t)
	h.LocalAddrs = func() ([]netip.Addr, error) { return []netip.Addr{netip.MustParseAddr("203.0.113.7")}, nil }
	h.LookupHost = func(_ context.Context, host string) ([]string, error) {
		switch {
		case host == "sandbox.example.test":
			return []string{"203.0.113.7"}, nil
		case host == "ssh.example.test":
			return []string{"198.51.100.9"}, nil
		}
		return nil, errors.New("no such host")
	}
	rep := Run(context.Background(), cfg, h)
	if r := find(t, rep, "dns dashboard"); r.Status != OK {
		t.Errorf("dashboard: %+v", r)
	}
	if r := find(t, rep, "dns ssh"); r.Status != Warn {
		t.Errorf("ssh: %+v", r)
	}
	if r := find(t, rep, "dns sandbox hosts"); r.Status != Fail || !strings.Contains(r.Fix, "*.example.test") {
		t.Errorf("wildcard: %+v", r)
	}
}

func testConfig(t *testing.T) *config.Config {
	cfg := config.Default()
	dir := t.TempDir()
	cfg.Sandbox.StateDir = filepath.Join(dir, "state")
	cfg.Server.DataDir = filepath.Join(dir, "data")
	cfg.Server.Host = "127.0.0.1"
	// Free ports, so the port checks pass.
	for _, p := range []*int{&cfg.Domain.HTTPPort, &cfg.Domain.HTTPSPort, &cfg.Domain.SSH.Port, &cfg.Server.Port} {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		*p = l.Addr().(*net.TCPAddr).Port
		l.Close()
	}
	return cfg
}

func quietHost(t *testing.T) Host {
	return Host{
		LookupHost: func(context.Context, string) ([]string, error) { return nil, errors.New("no dns in tests") },
		LocalAddrs: func() ([]netip.Addr, error) { return nil, nil },
	}
}

func find(t *testing.T, rep Report, name string) Result {
	t.Helper()
	for _, r := range rep.Results {
		if r.Name == name {
			return r
		}
	}
	t.Fatalf("no check %q in %+v", name, rep.Results)
	return Result{}
}

// TestFirecrackerVersion: advanced.server.firecracker.version is checked
// against what the installed binary says it is.
func TestFirecrackerVersion(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "firecracker")
	write := func(script string) {
		if err := os.WriteFile(bin, []byte("#!/bin/sh\n"+script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	cfg := config.Default()
	fc := &cfg.Advanced.Server.Firecracker
	fc.BinaryPath, fc.JailerPath, fc.Version = bin, "", "1.14.1"
	for _, c := range []struct {
		script string
		want   Status
		detail string
	}{
		{"echo 'Firecracker v1.14.1'; echo; echo 'Supported snapshot data format versions: v8.0.0'", OK, "Firecracker 1.14.1 at"},
		{"echo 'Firecracker v1.7.0'", Warn, "is Firecracker 1.7.0, not 1.14.1"},
		{"echo hello", Warn, "did not name a Firecracker release"},
		{"exit 3", Warn, "did not name a Firecracker release"},
	} {
		write(c.script)
		r := firecrackerCheck(cfg)
		if r.Status != c.want || !strings.Contains(r.Detail, c.detail) {
			t.Errorf("%q: %+v, want %s with %q", c.script, r, c.want, c.detail)
		}
	}
	if err := os.Remove(bin); err != nil {
		t.Fatal(err)
	}
	if r := firecrackerCheck(cfg); r.Status != Fail || !strings.Contains(r.Fix, "v1.14.1") {
		t.Errorf("missing binary: %+v", r)
	}
}
