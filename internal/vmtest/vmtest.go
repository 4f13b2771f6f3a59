// Package vmtest boots real guests for tests and benchmarks: QEMU's
// microvm machine under TCG (software emulation, no KVM), standing in for
// Firecracker, which needs KVM. It gives the guest what Firecracker would:
// an ELF vmlinux booted directly, a command line, one virtio-mmio block
// device (the root, /dev/vda), one virtio-mmio network device on a host
// TAP, an i8042 to deliver Ctrl-Alt-Del, and reboot as power-off.
//
// Instead of Firecracker's vsock, which needs vhost-vsock on the host, the
// guest gets a virtio-serial port named bootcontract.TestChannelName, whose
// host end is a unix socket in the test's directory: the agent serves on it
// only because the device exists, and Firecracker has no such device.
package vmtest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"atelier/internal/agent"
	"atelier/internal/bootcontract"
	"atelier/internal/ids"
	"atelier/internal/network"
	"atelier/internal/testimage"
)

// QEMUBinary is the emulator (Debian package qemu-system-x86).
const QEMUBinary = "qemu-system-x86_64"

// DefaultKernel is where .ci/run builds the test kernel when
// ATELIER_TEST_KERNEL does not say otherwise.
const DefaultKernel = "/var/cache/atelier-test/kernel/vmlinux"

// strict reports whether CI installed the prerequisites, so that a test
// missing one must fail rather than skip.
func strict() bool { return os.Getenv("ATELIER_TEST_STRICT") == "1" }

func skipOrFail(t testing.TB, format string, args ...any) {
	t.Helper()
	if strict() {
		t.Fatalf(format, args...)
	}
	t.Skipf(format, args...)
}

// Kernel returns the guest kernel built by `atelier images kernel`
// (ATELIER_TEST_KERNEL, else DefaultKernel), or skips.
func Kernel(t testing.TB) string {
	t.Helper()
	path := os.Getenv("ATELIER_TEST_KERNEL")
	if path == "" {
		path = DefaultKernel
	}
	if _, err := os.Stat(path); err != nil {
		skipOrFail(t, "no guest kernel at %s (build one: atelier images kernel --output %s; .ci/run does): %v", path, path, err)
	}
	return path
}

// Require skips (or, under ATELIER_TEST_STRICT, fails) without root or
// QEMU.
func Require(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("requires root: creates network namespaces and TAP devices")
	}
	if _, err := exec.LookPath(QEMUBinary); err != nil {
		skipOrFail(t, "requires %s (Debian package qemu-system-x86): %v", QEMUBinary, err)
	}
}

// Config is one guest, in Firecracker's terms.
type Config struct {
	Kernel string
	// Cmdline is the command line given to the kernel: Firecracker's
	// boot_args plus what Firecracker appends for the root drive. QEMU
	// then appends the virtio_mmio.device= arguments, as Firecracker does.
	Cmdline  string
	Disk     string
	MemoryMB int
	Vcpus    int
	// TAP is the host device of the guest's eth0, in the network namespace
	// NetNS (a path like /var/run/netns/NAME; empty: this one).
	TAP   string
	MAC   string
	NetNS string
	// Dir receives the sockets and QEMU's log.
	Dir string
}

// VM is a running QEMU guest.
type VM struct {
	cmd     *exec.Cmd
	Dir     string
	agent   string
	monitor string
	done    chan struct{}
	// connSlot holds a token while an agent connection is open.
	connSlot chan struct{}
	err      error
	Started  time.Time
}

// Args is QEMU's command line for c.
func Args(c Config, agentSock, monitorSock, serialLog string) []string {
	return []string{
		// rtc: the wall clock at boot (Firecracker's guest has kvm-clock).
		// No ACPI: microvm's is hardware-reduced, which takes the PIT's
		// interrupt away, and under emulation there is no kvm-clock to
		// replace it. The devices then reach the guest the other way
		// Firecracker also uses: virtio_mmio.device= arguments that QEMU,
		// like Firecracker, appends to the command line.
		"-M", "microvm,x-option-roms=off,rtc=on,acpi=off,pit=on,pic=on",
		"-accel", "tcg", "-cpu", "max",
		"-m", strconv.Itoa(c.MemoryMB), "-smp", strconv.Itoa(c.Vcpus),
		"-nodefaults", "-no-user-config", "-display", "none",
		// A guest reboot ends the VM, as reboot=k ends Firecracker.
		"-no-reboot",
		"-kernel", c.Kernel, "-append", c.Cmdline,
		"-drive", "id=root,file=" + c.Disk + ",format=raw,if=none,cache=unsafe",
		"-device", "virtio-blk-device,drive=root",
		"-netdev", "tap,id=eth0,ifname=" + c.TAP + ",script=no,downscript=no",
		"-device", "virtio-net-device,netdev=eth0,mac=" + c.MAC,
		// Firecracker delivers SendCtrlAltDel through its i8042.
		"-device", "i8042",
		"-device", "virtio-serial-device",
		"-chardev", "socket,id=agent,path=" + agentSock + ",server=on,wait=off",
		"-device", "virtserialport,chardev=agent,name=" + bootcontract.TestChannelName,
		"-monitor", "unix:" + monitorSock + ",server=on,wait=off",
		"-serial", "file:" + serialLog,
	}
}

// Start boots c. The VM is killed at the test's end if still running.
func Start(t testing.TB, c Config) *VM {
	t.Helper()
	if c.Dir == "" {
		c.Dir = t.TempDir()
	}
	if err := os.MkdirAll(c.Dir, 0o700); err != nil {
		t.Fatal(err)
	}
	v := &VM{
		Dir:      c.Dir,
		agent:    filepath.Join(c.Dir, "agent.sock"),
		monitor:  filepath.Join(c.Dir, "monitor.sock"),
		done:     make(chan struct{}),
		connSlot: make(chan struct{}, 1),
	}
	logf, err := os.Create(filepath.Join(c.Dir, "qemu.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(QEMUBinary, Args(c, v.agent, v.monitor, filepath.Join(c.Dir, "serial.log"))...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// No Pdeathsig: it fires when the forking thread ends, and network.Do
	// forks from a thread of its own.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	start := func() error { return cmd.Start() }
	if c.NetNS != "" {
		ns, err := netns.GetFromPath(c.NetNS)
		if err != nil {
			t.Fatalf("open netns %s: %v", c.NetNS, err)
		}
		defer ns.Close()
		inner := start
		start = func() error { return network.Do(ns, inner) }
	}
	v.Started = time.Now()
	if err := start(); err != nil {
		t.Fatalf("start qemu: %v", err)
	}
	v.cmd = cmd
	go func() {
		v.err = cmd.Wait()
		close(v.done)
	}()
	t.Cleanup(v.Kill)
	// The sockets exist once QEMU has parsed its arguments.
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(v.monitor); err == nil {
			if _, err := os.Stat(v.agent); err == nil {
				break
			}
		}
		select {
		case <-v.done:
			t.Fatalf("qemu exited at once: %v\n%s", v.err, v.Log())
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("qemu did not create its sockets\n%s", v.Log())
		}
	}
	return v
}

// Log is QEMU's own output.
func (v *VM) Log() string {
	b, _ := os.ReadFile(filepath.Join(v.Dir, "qemu.log"))
	return string(b)
}

// AgentDialer reaches the guest agent over the test channel. The port is
// one byte stream: QEMU serves one connection at a time, so a second dial
// waits until the first connection is closed (the agent client then reuses
// one connection for request after request).
func (v *VM) AgentDialer() agent.Dialer {
	return func(ctx context.Context) (net.Conn, error) {
		select {
		case v.connSlot <- struct{}{}:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		var d net.Dialer
		c, err := d.DialContext(ctx, "unix", v.agent)
		if err != nil {
			<-v.connSlot
			return nil, err
		}
		return &slotConn{Conn: c, release: func() { <-v.connSlot }}, nil
	}
}

// slotConn gives its VM's connection slot back when closed.
type slotConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *slotConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}

// Agent is a client of the guest's agent, closed at the test's end.
func (v *VM) Agent(t testing.TB) *agent.Client {
	c := agent.New(v.AgentDialer())
	t.Cleanup(func() { c.Close() })
	return c
}

// Monitor sends one command to QEMU's human monitor.
func (v *VM) Monitor(cmd string) error {
	c, err := net.DialTimeout("unix", v.monitor, 5*time.Second)
	if err != nil {
		return fmt.Errorf("qemu monitor: %w", err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(c)
	// The greeting ends with the "(qemu) " prompt.
	if err := readPrompt(br); err != nil {
		return fmt.Errorf("qemu monitor: %w", err)
	}
	if _, err := io.WriteString(c, cmd+"\n"); err != nil {
		return fmt.Errorf("qemu monitor: %w", err)
	}
	if err := readPrompt(br); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("qemu monitor: %s: %w", cmd, err)
	}
	return nil
}

func readPrompt(br *bufio.Reader) error {
	var seen strings.Builder
	for !strings.HasSuffix(seen.String(), "(qemu) ") {
		b, err := br.ReadByte()
		if err != nil {
			return err
		}
		seen.WriteByte(b)
	}
	return nil
}

// CtrlAltDel presses Ctrl-Alt-Del on the guest's keyboard controller, as
// Firecracker's SendCtrlAltDel does.
func (v *VM) CtrlAltDel() error { return v.Monitor("sendkey ctrl-alt-delete") }

// Wait waits up to timeout for QEMU to exit, returning its exit error.
func (v *VM) Wait(timeout time.Duration) (exited bool, err error) {
	select {
	case <-v.done:
		return true, v.err
	case <-time.After(timeout):
		return false, nil
	}
}

// Kill ends QEMU now.
func (v *VM) Kill() {
	if v.cmd == nil || v.cmd.Process == nil {
		return
	}
	select {
	case <-v.done:
		return
	default:
	}
	_ = syscall.Kill(-v.cmd.Process.Pid, syscall.SIGKILL)
	<-v.done
}

// fixture is what every guest of one test binary shares.
var fixture struct {
	once  sync.Once
	dir   string
	image string
	err   error
}

// Image builds the static agent and the test image (internal/testimage,
// the agent at bootcontract.InitPath) once per test binary; each guest
// boots a copy. Call Cleanup from TestMain to remove it; a test binary
// without that TestMain uses BuildImage with a directory of its test.
func Image(t testing.TB) string {
	t.Helper()
	fixture.once.Do(func() {
		dir, err := os.MkdirTemp("", "atelier-vmtest-")
		if err != nil {
			fixture.err = err
			return
		}
		fixture.dir = dir
		fixture.image, fixture.err = buildImage(dir)
	})
	if fixture.err != nil {
		skipOrFail(t, "test image: %v", fixture.err)
	}
	return fixture.image
}

// BuildImage builds the agent and the test image into dir (a directory
// the test removes) and returns the image's path.
func BuildImage(t testing.TB, dir string) string {
	t.Helper()
	image, err := buildImage(dir)
	if err != nil {
		skipOrFail(t, "test image: %v", err)
	}
	return image
}

func buildImage(dir string) (string, error) {
	for _, tool := range []string{"mkfs.ext4", "debugfs"} {
		if _, err := exec.LookPath(tool); err != nil {
			return "", fmt.Errorf("requires %s (e2fsprogs): %w", tool, err)
		}
	}
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	root := filepath.Dir(strings.TrimSpace(string(out)))
	bin := filepath.Join(dir, "atelier-agent")
	cmd := exec.Command("go", "build", "-trimpath", "-o", bin, "./cmd/atelier-agent")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build agent: %w\n%s", err, out)
	}
	image := filepath.Join(dir, "test.ext4")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := testimage.Build(ctx, image, bin, 0); err != nil {
		return "", err
	}
	return image, nil
}

// Cleanup removes the shared image; call it from TestMain after m.Run.
func Cleanup() {
	if fixture.dir != "" {
		os.RemoveAll(fixture.dir)
	}
}

// Disk copies the test image to a sparse file of sizeMB (larger than the
// image: the guest grows its root filesystem to fill it).
func Disk(t testing.TB, path string, sizeMB int) {
	t.Helper()
	image := Image(t)
	if out, err := exec.Command("cp", "--sparse=always", image, path).CombinedOutput(); err != nil {
		t.Fatalf("copy test image: %v: %s", err, out)
	}
	if err := os.Truncate(path, int64(sizeMB)<<20); err != nil {
		t.Fatal(err)
	}
}

// Net is a test host network: a network namespace named <prefix>host with
// a default route (through a veth to a namespace with nothing behind it)
// and Atelier's own bridge, firewall and TAPs in it (network.Manager).
type Net struct {
	Prefix  string
	NetNS   string // path of the host namespace
	Manager *network.Manager
	Bridge  netip.Prefix
}

// NewNet sets up a Net whose names start with a random atlt-<rand>-
// prefix; everything is removed at the test's end, and the test fails if
// a namespace of that prefix is left.
func NewNet(t testing.TB, bridge netip.Prefix, dns []netip.Addr) *Net {
	t.Helper()
	n := &Net{Prefix: "atlt-" + ids.New(6) + "-", Bridge: bridge}
	host := n.Prefix + "host"
	n.NetNS = "/var/run/netns/" + host
	t.Cleanup(func() {
		out, _ := exec.Command("ip", "netns", "list").Output()
		if strings.Contains(string(out), n.Prefix) {
			t.Errorf("network namespaces left behind: %s", out)
		}
	})
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	run("netns", "add", host)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", host).Run() })
	for _, args := range [][]string{
		{"link", "set", "lo", "up"},
		{"link", "add", "wan0", "type", "veth", "peer", "name", "wan1"},
		{"addr", "add", "198.51.100.1/24", "dev", "wan0"},
		{"link", "set", "wan0", "up"},
		{"link", "set", "wan1", "up"},
		{"route", "add", "default", "via", "198.51.100.2"},
	} {
		run(append([]string{"-n", host}, args...)...)
	}
	h, err := netns.GetFromPath(n.NetNS)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	m, err := network.New(network.Options{
		Bridge: "br0", BridgeIP: bridge, DNSServers: dns, Kind: network.LinkTAP, HostNS: h,
		NetnsPrefix: n.Prefix + "g-",
		Log:         slog.New(slog.NewTextHandler(io.Discard, nil)),
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
	n.Manager = m
	return n
}
