package container

import (
	"atelier/internal/logkeeper"
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"atelier/internal/agent"
	"atelier/internal/ids"
	"atelier/internal/network"
	"atelier/internal/runtime/container/containertest"
	"atelier/internal/sandbox"
	"atelier/internal/store"
	"atelier/internal/testimage"
)

// The integration tests boot real containers: they need root, runc, the
// agent's source (cmd/atelier-agent) and e2fsprogs. Everything they make
// is named atlt-* (namespaces) or lives in the test's temp dir, and each
// test checks at its end that it left no container, mount, loop device,
// namespace, cgroup or process behind.

var fixture struct {
	once  sync.Once
	dir   string
	image string
	probe string // containertest/probe, built static
	skip  string
	err   error
}

func TestMain(m *testing.M) {
	logkeeper.MainIfKeeper()
	code := m.Run()
	if fixture.dir != "" {
		os.RemoveAll(fixture.dir)
	}
	os.Exit(code)
}

func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("requires root: loop-mounts volumes, creates network namespaces and runs runc")
	}
	if _, err := exec.LookPath("runc"); err != nil {
		t.Skip("requires runc (Debian package runc)")
	}
}

// testImage builds the agent and the test image once per test binary.
func testImage(t testing.TB) string {
	t.Helper()
	requireRoot(t)
	fixture.once.Do(func() {
		root, err := moduleRoot()
		if err != nil {
			fixture.err = err
			return
		}
		if _, err := os.Stat(filepath.Join(root, "cmd", "atelier-agent")); err != nil {
			fixture.skip = "cmd/atelier-agent does not exist yet: no agent to put in the test image"
			return
		}
		for _, tool := range []string{"mkfs.ext4", "debugfs"} {
			if _, err := exec.LookPath(tool); err != nil {
				fixture.skip = "requires " + tool + " (e2fsprogs)"
				return
			}
		}
		dir, err := os.MkdirTemp("", "atelier-container-test-")
		if err != nil {
			fixture.err = err
			return
		}
		fixture.dir = dir
		agentBin := filepath.Join(dir, "atelier-agent")
		cmd := exec.Command("go", "build", "-o", agentBin, "./cmd/atelier-agent")
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			fixture.err = fmt.Errorf("build agent: %w\n%s", err, out)
			return
		}
		if fixture.probe, err = containertest.BuildProbe(dir); err != nil {
			fixture.err = err
			return
		}
		image := filepath.Join(dir, "test.ext4")
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := testimage.Build(ctx, image, agentBin, 0); err != nil {
			fixture.err = err
			return
		}
		fixture.image = image
	})
	if fixture.skip != "" {
		t.Skip(fixture.skip)
	}
	if fixture.err != nil {
		t.Fatal(fixture.err)
	}
	return fixture.image
}

func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("not inside the atelier module")
	}
	return filepath.Dir(gomod), nil
}

// env is one driver with its own directories, cgroup parent and namespace
// prefix, plus (withNetwork) a network.Manager whose bridge lives in a test
// "host" namespace.
type env struct {
	t      testing.TB
	d      *Driver
	dir    string
	image  string
	prefix string // of every namespace the test makes
	cgroup string // the driver's CgroupParent
	net    *network.Manager
	mu     sync.Mutex
	next   byte
	disks  []string
	pidNS  []string
}

type envOpt func(*Options)

func newEnv(t testing.TB, withNetwork bool, opts ...envOpt) *env {
	t.Helper()
	image := testImage(t)
	tag := ids.New(6)
	e := &env{t: t, dir: searchableTempDir(t), image: image, prefix: "atlt-" + tag + "-", cgroup: "/atelier-test-" + tag, next: 10}
	// Registered first, so it runs after every other cleanup.
	t.Cleanup(e.checkNoLeaks)
	o := Options{
		StateDir:     filepath.Join(e.dir, "runc"),
		BundleDir:    filepath.Join(e.dir, "bundles"),
		SocketDir:    filepath.Join(e.dir, "sockets"),
		LogDir:       filepath.Join(e.dir, "log"),
		CgroupParent: e.cgroup,
		NetnsPath:    func(id string) string { return "/var/run/netns/" + e.prefix + "g-" + id },
		Log:          slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn})),
	}
	for _, f := range opts {
		f(&o)
	}
	d, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	e.d = d
	if withNetwork {
		e.setupNetwork()
	}
	return e
}

// searchableTempDir is t.TempDir opened for search by others (0711), as a
// state dir must be for guests in a user namespace (see searchableByOthers).
func searchableTempDir(t testing.TB) string {
	dir := t.TempDir()
	for _, p := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(p, 0o711); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

var (
	testBridge = netip.MustParsePrefix("172.16.0.1/24")
	testDNS    = []string{"172.16.0.1", "2001:db8::53"}
)

// setupNetwork makes a host namespace with a default route (Setup wants an
// egress interface) and a network.Manager attaching veths to its bridge.
func (e *env) setupNetwork() {
	t := e.t
	t.Helper()
	host := e.prefix + "host"
	run(t, "ip", "netns", "add", host)
	t.Cleanup(func() { runQuiet("ip", "netns", "del", host) })
	for _, args := range [][]string{
		{"link", "set", "lo", "up"},
		{"link", "add", "wan0", "type", "veth", "peer", "name", "wan1"},
		{"addr", "add", "198.51.100.1/24", "dev", "wan0"},
		{"link", "set", "wan0", "up"},
		{"link", "set", "wan1", "up"},
		{"route", "add", "default", "via", "198.51.100.2"},
	} {
		run(t, "ip", append([]string{"-n", host}, args...)...)
	}
	h, err := netns.GetFromPath("/var/run/netns/" + host)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	m, err := network.New(network.Options{
		Bridge:      "br0",
		BridgeIP:    testBridge,
		DNSServers:  []netip.Addr{testBridge.Addr()},
		Kind:        network.LinkVeth,
		HostNS:      h,
		NetnsPrefix: e.prefix + "g-",
		Log:         slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := m.Teardown(context.Background()); err != nil {
			t.Errorf("network teardown: %v", err)
		}
		m.Close()
	})
	if err := m.Setup(context.Background()); err != nil {
		t.Fatal(err)
	}
	e.net = m
}

// sbx is one sandbox of a test: its id, volume and instance.
type sbx struct {
	id   string
	inst sandbox.Instance
}

// newSandbox copies the image to a fresh volume and gives the sandbox its
// network namespace (the network driver's, or a bare one with lo up). Its
// cleanup destroys the sandbox, then undoes by hand whatever Destroy
// missed, in the order runc delete -f, umount, losetup -d, netns del.
func (e *env) newSandbox() *sbx {
	t := e.t
	t.Helper()
	id := ids.NewSandboxID()
	disk := filepath.Join(e.dir, id+".ext4")
	run(t, "cp", "--sparse=always", e.image, disk)
	e.mu.Lock()
	e.disks = append(e.disks, disk)
	last := e.next
	e.next++
	e.mu.Unlock()
	s := &sbx{id: id, inst: sandbox.Instance{
		ID: id, Vcpus: 1, MemoryMB: 256, Gateway: testBridge.Addr().String(), PrefixLen: 24,
		DNS: testDNS, Disk: disk,
	}}
	ctx := context.Background()
	// The address also picks the sandbox's user-namespace id range, so a
	// sandbox without a network still gets one.
	ip := netip.AddrFrom4([4]byte{172, 16, 0, last})
	s.inst.IP = ip.String()
	if e.net != nil {
		lease := store.Lease{IP: ip.String(), SandboxID: id, MAC: fmt.Sprintf("06:00:ac:10:00:%02x", last)}
		link, err := e.net.Attach(ctx, id, lease)
		if err != nil {
			t.Fatalf("attach network: %v", err)
		}
		s.inst.IP, s.inst.MAC, s.inst.Link = lease.IP, lease.MAC, link
	} else {
		run(t, "ip", "netns", "add", e.prefix+"g-"+id)
		run(t, "ip", "-n", e.prefix+"g-"+id, "link", "set", "lo", "up")
	}
	t.Cleanup(func() {
		if err := e.d.Destroy(ctx, id); err != nil {
			t.Errorf("cleanup destroy %s: %v", id, err)
		}
		runQuiet(e.d.runc, "--root", e.d.opts.StateDir, "delete", "--force", containerName(id))
		runQuiet("umount", "--lazy", e.d.rootfs(id))
		runQuiet("umount", "--lazy", e.d.socketDir(id))
		if devs, _ := LoopsBacking(disk); len(devs) > 0 {
			runQuiet("losetup", append([]string{"-d"}, devs...)...)
		}
		if e.net != nil {
			if err := e.net.Detach(ctx, id); err != nil {
				t.Errorf("detach network %s: %v", id, err)
			}
		} else {
			runQuiet("ip", "netns", "del", e.prefix+"g-"+id)
		}
	})
	return s
}

// boot boots s and waits for its agent; the client is closed at cleanup.
func (e *env) boot(s *sbx) *agent.Client {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := e.d.Boot(ctx, s.inst); err != nil {
		e.t.Fatalf("boot %s: %v\nlog:\n%s", s.id, err, e.log(s.id))
	}
	e.recordPidNS(s.id)
	return e.connect(s)
}

func (e *env) connect(s *sbx) *agent.Client {
	e.t.Helper()
	c := agent.New(e.d.AgentDialer(s.id))
	e.t.Cleanup(func() { c.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := c.WaitReady(ctx, 5*time.Millisecond); err != nil {
		e.t.Fatalf("agent of %s not ready: %v\nlog:\n%s", s.id, err, e.log(s.id))
	}
	return c
}

func (e *env) log(id string) string {
	b, _ := os.ReadFile(e.d.LogPath(id))
	return string(b)
}

// recordPidNS remembers the container's pid namespace, so the leak check
// can prove that no process of it survives.
func (e *env) recordPidNS(id string) {
	st, err := e.d.state(context.Background(), id)
	if err != nil {
		e.t.Fatalf("state of %s: %v", id, err)
	}
	ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", st.Pid))
	if err != nil {
		e.t.Fatalf("pid namespace of %s: %v", id, err)
	}
	e.mu.Lock()
	e.pidNS = append(e.pidNS, ns)
	e.mu.Unlock()
}

// exec runs argv in the guest and returns its trimmed stdout; a non-zero
// exit fails the test.
func execOK(t testing.TB, c *agent.Client, argv ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r, err := c.Exec(ctx, agent.ExecRequest{Argv: argv, TimeoutMs: 8000})
	if err != nil {
		t.Fatalf("exec %q: %v", argv, err)
	}
	if r.ExitCode != 0 {
		t.Fatalf("exec %q: exit %d\nstdout: %s\nstderr: %s", argv, r.ExitCode, r.Stdout, r.Stderr)
	}
	return strings.TrimSpace(r.Stdout)
}

// installProbe copies containertest/probe into the guest as /usr/bin/probe.
func installProbe(t testing.TB, c *agent.Client) {
	t.Helper()
	f, err := os.Open(fixture.probe)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.WriteFile(ctx, "/usr/bin/probe", f, agent.WriteFileOptions{Mode: 0o755}); err != nil {
		t.Fatalf("install probe: %v", err)
	}
}

// leftovers lists what the sandbox still holds on the host.
func (e *env) leftovers(id, disk string) []string {
	var out []string
	if _, err := os.Stat(filepath.Join(e.d.opts.StateDir, containerName(id))); err == nil {
		out = append(out, "runc state dir")
	}
	for _, p := range []string{e.d.rootfs(id), filepath.Join(e.d.bundleDir(id), sysfsDir), e.d.socketDir(id)} {
		if ms, _ := mountsAt(p); len(ms) > 0 {
			out = append(out, fmt.Sprintf("mount %v", ms))
		}
	}
	if devs, _ := LoopsBacking(disk); len(devs) > 0 {
		out = append(out, fmt.Sprintf("loop devices %v", devs))
	}
	if _, err := os.Stat(e.d.bundleDir(id)); err == nil {
		out = append(out, "bundle dir")
	}
	return out
}

func (e *env) pidNSProcesses() []string {
	e.mu.Lock()
	want := map[string]bool{}
	for _, ns := range e.pidNS {
		want[ns] = true
	}
	e.mu.Unlock()
	var out []string
	procs, _ := filepath.Glob("/proc/[0-9]*")
	for _, p := range procs {
		ns, err := os.Readlink(p + "/ns/pid")
		if err != nil || !want[ns] {
			continue
		}
		if processGoneAt(p) {
			continue
		}
		out = append(out, filepath.Base(p))
	}
	return out
}

func processGoneAt(procDir string) bool {
	var pid int
	fmt.Sscanf(filepath.Base(procDir), "%d", &pid)
	return processGone(pid)
}

// checkNoLeaks runs last: no container under the test's runc root, nothing
// mounted under its bundles, no loop device on its volumes, no namespace
// with its prefix, no process in the pid namespaces of its containers, no
// cgroup left (the parent dir is removed here).
func (e *env) checkNoLeaks() {
	t := e.t
	if e.d == nil {
		return
	}
	if out, err := exec.Command(e.d.runc, "--root", e.d.opts.StateDir, "list", "-q").Output(); err == nil && len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("runc containers left: %s", out)
	}
	if ms, err := e.d.Mounts(); err != nil || len(ms) > 0 {
		t.Errorf("mounts left: %v %v", ms, err)
	}
	if devs, err := e.d.LoopDevices(); err != nil || len(devs) > 0 {
		t.Errorf("loop devices left: %v %v", devs, err)
	}
	for _, disk := range e.disks {
		if devs, _ := LoopsBacking(disk); len(devs) > 0 {
			t.Errorf("loop devices left on %s: %v", disk, devs)
		}
	}
	if ents, _ := os.ReadDir("/var/run/netns"); len(ents) > 0 {
		for _, ent := range ents {
			if strings.HasPrefix(ent.Name(), e.prefix) {
				t.Errorf("network namespace left: %s", ent.Name())
			}
		}
	}
	if procs := e.pidNSProcesses(); len(procs) > 0 {
		t.Errorf("processes left in the sandboxes' pid namespaces: %v", procs)
	}
	// The parent cgroup is the test's own; runc removed the containers'.
	dirs, _ := filepath.Glob(filepath.Join(cgroupRoot, "*", strings.TrimPrefix(e.cgroup, "/")))
	dirs = append(dirs, filepath.Join(cgroupRoot, strings.TrimPrefix(e.cgroup, "/")))
	for _, dir := range dirs {
		if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Errorf("cgroup %s left: %v", dir, err)
		}
	}
}

func run(t testing.TB, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

func runQuiet(name string, args ...string) {
	exec.Command(name, args...).Run()
}
