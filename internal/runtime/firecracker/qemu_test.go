package firecracker

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"atelier/internal/agent"
	"atelier/internal/bootcontract"
	"atelier/internal/ids"
	"atelier/internal/sandbox"
	"atelier/internal/store"
	"atelier/internal/vmtest"
)

// The real-kernel proof of the boot contract. Firecracker needs KVM, which
// build machines lack, so QEMU's microvm machine (TCG) stands in for it:
// qemuConfig turns the configuration the driver would send Firecracker
// into QEMU's, and nothing of the guest's boot is retyped here. The guest
// is the kernel `atelier images kernel` builds and the test image, on a TAP
// of Atelier's own bridge and firewall in a test namespace, with the lease
// the service's allocator gives.

var (
	qemuBridge = netip.MustParsePrefix("172.16.0.1/24")
	// The bridge (the gateway answers DNS in production setups) and a
	// documentation address nobody is asked.
	qemuDNS = []netip.Addr{qemuBridge.Addr(), netip.MustParseAddr("192.0.2.53")}
)

const (
	qemuDiskMB  = 256
	qemuSwapMB  = 16
	qemuBootMax = 3 * time.Minute // TCG on a loaded 2-core machine
)

// qemuGuest is one guest booted from the driver's plan.
type qemuGuest struct {
	id    string
	inst  sandbox.Instance
	plan  bootPlan
	vm    *vmtest.VM
	agent *agent.Client
	disk  string
	// ready is how long the agent took to answer, from QEMU's start.
	ready time.Duration
}

// qemuConfig is what Firecracker would be given, as QEMU arguments: the
// kernel and boot_args of PUT /boot-source plus what Firecracker appends
// for a read-write root drive, the drive of PUT /drives/rootfs, the
// interface of PUT /network-interfaces/eth0, the machine configuration.
func qemuConfig(t testing.TB, p bootPlan, netns, dir string) vmtest.Config {
	t.Helper()
	if !p.rootfs.IsRootDevice || p.rootfs.IsReadOnly == nil || *p.rootfs.IsReadOnly {
		t.Fatalf("root drive %+v is not a read-write root device", p.rootfs)
	}
	return vmtest.Config{
		Kernel:   p.boot.KernelImagePath,
		Cmdline:  p.boot.BootArgs + " " + bootcontract.VMMArgs,
		Disk:     p.rootfs.PathOnHost,
		MemoryMB: p.machine.MemSizeMib,
		Vcpus:    p.machine.VcpuCount,
		TAP:      p.eth0.HostDevName,
		MAC:      p.eth0.GuestMAC,
		NetNS:    netns,
		Dir:      dir,
	}
}

// qemuHost is a test host: Atelier's network in a test namespace and a
// store whose lease allocator gives the guests their addresses.
type qemuHost struct {
	net *vmtest.Net
	st  *store.Store
}

func newQEMUHost(t testing.TB) *qemuHost {
	t.Helper()
	vmtest.Require(t)
	h := &qemuHost{net: vmtest.NewNet(t, qemuBridge, qemuDNS)}
	st, err := store.Open(context.Background(), filepath.Join(t.TempDir(), "db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	h.st = st
	return h
}

// bootQEMU leases an address as the service does, attaches a TAP, makes a
// disk from the test image and boots it with the driver's plan.
func bootQEMU(t testing.TB, h *qemuHost, swap bool) *qemuGuest {
	t.Helper()
	kernel := vmtest.Kernel(t)
	ctx := context.Background()
	dir := t.TempDir()
	g := &qemuGuest{id: ids.NewSandboxID(), disk: filepath.Join(dir, "disk.ext4")}
	n := h.net

	// The service's range starts at the bridge address + guestIpStart (10).
	first := qemuBridge.Addr()
	for range 10 {
		first = first.Next()
	}
	lease, err := h.st.AllocateLease(ctx, g.id, first, netip.MustParseAddr("172.16.0.250"), sandbox.MACFor)
	if err != nil {
		t.Fatal(err)
	}
	link, err := n.Manager.Attach(ctx, g.id, lease)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := n.Manager.Detach(context.Background(), g.id); err != nil {
			t.Errorf("detach: %v", err)
		}
	})

	vmtest.Disk(t, g.disk, qemuDiskMB)
	if swap {
		addSwapFile(t, g.disk, qemuSwapMB)
	}
	var dns []string
	for _, d := range qemuDNS {
		dns = append(dns, d.String())
	}
	g.inst = sandbox.Instance{
		ID: g.id, Vcpus: 1, MemoryMB: 256, IP: lease.IP, MAC: lease.MAC,
		Gateway: qemuBridge.Addr().String(), PrefixLen: qemuBridge.Bits(), DNS: dns,
		Disk: g.disk, Link: link,
	}
	d, err := New(Options{
		Binary: "/usr/local/bin/firecracker", Kernel: kernel,
		SocketDir: filepath.Join(dir, "s"), LogDir: filepath.Join(dir, "l"), SnapshotDir: filepath.Join(dir, "n"),
	})
	if err != nil {
		t.Fatal(err)
	}
	if g.plan, err = d.plan(g.inst); err != nil {
		t.Fatal(err)
	}
	g.vm = vmtest.Start(t, qemuConfig(t, g.plan, n.NetNS, filepath.Join(dir, "vm")))
	g.agent = g.vm.Agent(t)
	// One request, sent at once: it waits in the channel until the agent
	// opens its end, so its answer marks the moment the agent is ready.
	wctx, cancel := context.WithTimeout(ctx, qemuBootMax)
	defer cancel()
	if h, err := g.agent.Health(wctx); err != nil || h.Status != "healthy" {
		g.vm.Kill()
		t.Fatalf("agent never answered: %v\nqemu: %s\ninit log:\n%s", err, g.vm.Log(), imageFile(t, g.disk, bootcontract.InitLog))
	}
	g.ready = time.Since(g.vm.Started)
	return g
}

// run executes argv in the guest and returns its stdout; a non-zero exit
// fails the test.
func (g *qemuGuest) run(t testing.TB, argv ...string) string {
	t.Helper()
	res := g.exec(t, argv...)
	if res.ExitCode != 0 {
		t.Fatalf("%v: exit %d: %s%s", argv, res.ExitCode, res.Stdout, res.Stderr)
	}
	return res.Stdout
}

func (g *qemuGuest) exec(t testing.TB, argv ...string) *agent.ExecResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := g.agent.Exec(ctx, agent.ExecRequest{Argv: argv, TimeoutMs: 50000})
	if err != nil {
		t.Fatalf("%v: %v", argv, err)
	}
	return res
}

// addSwapFile puts a swap file at bootcontract.SwapFile into the image. No
// block of it may be all zero, or debugfs leaves a hole, which swapon
// refuses: the file is filled first, and after mkswap, which zeroes its
// first page around the header, a byte is set again in the boot sector and
// in the unused bad-page list (the image has 1 KiB blocks).
func addSwapFile(t testing.TB, disk string, mb int) {
	t.Helper()
	f := filepath.Join(t.TempDir(), "swap")
	if err := os.WriteFile(f, []byte(strings.Repeat("\xa5", mb<<20)), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mkswap", f).CombinedOutput(); err != nil {
		t.Fatalf("mkswap: %v: %s", err, out)
	}
	fh, err := os.OpenFile(f, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, off := range []int64{0, 2048 + 512} {
		if _, err := fh.WriteAt([]byte{0xa5}, off); err != nil {
			t.Fatal(err)
		}
	}
	fh.Close()
	if out, err := exec.Command("debugfs", "-w", "-R", "write "+f+" "+bootcontract.SwapFile, disk).CombinedOutput(); err != nil {
		t.Fatalf("debugfs write: %v: %s", err, out)
	}
}

// imageFile reads a file from an ext4 image (QEMU stopped, or for a log).
func imageFile(t testing.TB, disk, path string) string {
	out, err := exec.Command("debugfs", "-R", "cat "+path, disk).Output()
	if err != nil {
		return fmt.Sprintf("(debugfs: %v)", err)
	}
	return string(out)
}

func TestGuestBootsUnderQEMU(t *testing.T) {
	g := bootQEMU(t, newQEMUHost(t), true)
	t.Logf("kernel boot to agent ready under QEMU TCG: %v", g.ready.Round(time.Millisecond))
	ctx := context.Background()

	t.Run("the kernel got exactly the driver's command line", func(t *testing.T) {
		// The VMM appends the root device and one virtio_mmio.device= per
		// device, as Firecracker does; nothing else may differ.
		want := g.plan.boot.BootArgs + " " + bootcontract.VMMArgs
		got := strings.TrimSpace(g.run(t, "cat", "/proc/cmdline"))
		rest, ok := strings.CutPrefix(got, want)
		if !ok {
			t.Fatalf("/proc/cmdline\n%s\ndoes not start with\n%s", got, want)
		}
		devices := strings.Fields(rest)
		for _, f := range devices {
			if !strings.HasPrefix(f, "virtio_mmio.device=") {
				t.Errorf("/proc/cmdline has %q beyond the driver's arguments", f)
			}
		}
		if len(devices) < 3 {
			t.Errorf("the VMM passed %d virtio devices, want the drive, eth0 and the test channel: %q", len(devices), rest)
		}
	})
	t.Run("PID 1 is the agent at the contract's init path", func(t *testing.T) {
		if exe := strings.TrimSpace(g.run(t, "readlink", "/proc/1/exe")); exe != bootcontract.InitPath {
			t.Errorf("/proc/1/exe = %q, want %q", exe, bootcontract.InitPath)
		}
		// The kernel passes no arguments: PID 1 is init because it is PID 1.
		if argv := g.run(t, "cat", "/proc/1/cmdline"); argv != bootcontract.InitPath+"\x00" {
			t.Errorf("/proc/1/cmdline = %q", argv)
		}
		h, err := g.agent.Health(ctx)
		if err != nil || h.SandboxID != g.id {
			t.Errorf("health = %+v, %v; want sandbox id %s", h, err, g.id)
		}
	})
	t.Run("eth0 has the leased address and MAC", func(t *testing.T) {
		addr := g.run(t, "ip", "-4", "-o", "addr", "show", "dev", bootcontract.Interface)
		if !strings.Contains(addr, " "+g.inst.IP+"/"+strconv.Itoa(g.inst.PrefixLen)+" ") {
			t.Errorf("eth0: %q, want %s/%d", addr, g.inst.IP, g.inst.PrefixLen)
		}
		if mac := strings.TrimSpace(g.run(t, "cat", "/sys/class/net/eth0/address")); mac != strings.ToLower(g.inst.MAC) {
			t.Errorf("eth0 MAC %q, want %q", mac, g.inst.MAC)
		}
		if route := g.run(t, "ip", "-4", "route", "show", "default"); !strings.Contains(route, "via "+g.inst.Gateway) {
			t.Errorf("default route %q, want via %s", route, g.inst.Gateway)
		}
	})
	t.Run("the gateway answers ping", func(t *testing.T) {
		g.run(t, "ping", "-c", "1", "-W", "5", g.inst.Gateway)
	})
	t.Run("resolv.conf has the configured DNS", func(t *testing.T) {
		var want strings.Builder
		for _, d := range g.inst.DNS {
			fmt.Fprintf(&want, "nameserver %s\n", d)
		}
		if got := g.run(t, "cat", "/etc/resolv.conf"); got != want.String() {
			t.Errorf("/etc/resolv.conf = %q, want %q", got, want.String())
		}
	})
	t.Run("the host name is the sandbox's", func(t *testing.T) {
		want := bootcontract.Hostname(g.id)
		if got := strings.TrimSpace(g.run(t, "hostname")); got != want {
			t.Errorf("hostname %q, want %q", got, want)
		}
		if got := g.run(t, "cat", "/etc/hostname"); got != want+"\n" {
			t.Errorf("/etc/hostname %q", got)
		}
		if hosts := g.run(t, "cat", "/etc/hosts"); !strings.Contains(hosts, "127.0.1.1\t"+want+"\n") {
			t.Errorf("/etc/hosts lacks the host name: %q", hosts)
		}
	})
	t.Run("the root filesystem fills the disk", func(t *testing.T) {
		// Growth runs beside the agent: wait for it.
		var kb int
		deadline := time.Now().Add(time.Minute)
		for {
			f := strings.Fields(strings.Split(g.run(t, "df", "-k", "/"), "\n")[1])
			kb, _ = strconv.Atoi(f[1])
			// ext4's own metadata takes a few percent of the device.
			if kb > qemuDiskMB*1024*9/10 || time.Now().After(deadline) {
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
		if kb <= qemuDiskMB*1024*9/10 {
			t.Errorf("/ is %d KiB on a %d MiB disk", kb, qemuDiskMB)
		}
	})
	t.Run("the image's swap file is on", func(t *testing.T) {
		deadline := time.Now().Add(time.Minute)
		for !strings.Contains(g.run(t, "cat", "/proc/swaps"), bootcontract.SwapFile) {
			if time.Now().After(deadline) {
				t.Fatalf("/proc/swaps: %q\ninit log:\n%s", g.run(t, "cat", "/proc/swaps"), g.run(t, "cat", bootcontract.InitLog))
			}
			time.Sleep(200 * time.Millisecond)
		}
	})
	t.Run("the clock is the host's", func(t *testing.T) {
		s, err := strconv.ParseInt(strings.TrimSpace(g.run(t, "date", "+%s")), 10, 64)
		if d := time.Since(time.Unix(s, 0)); err != nil || d < -time.Minute || d > 2*time.Minute {
			t.Errorf("guest clock %v off the host's (%v)", d, err)
		}
	})
	t.Run("commands run with their exit code", func(t *testing.T) {
		if res := g.exec(t, "sh", "-c", "echo out; echo err >&2; exit 7"); res.ExitCode != 7 || res.Stdout != "out\n" || res.Stderr != "err\n" {
			t.Errorf("exec = %+v", res)
		}
	})
	t.Run("the boot was timed", func(t *testing.T) {
		start, err1 := strconv.ParseInt(strings.TrimSpace(g.run(t, "cat", bootcontract.RunDir+"/"+bootcontract.InitStartFile)), 10, 64)
		listen, err2 := strconv.ParseInt(strings.TrimSpace(g.run(t, "cat", bootcontract.RunDir+"/"+bootcontract.AgentListeningFile)), 10, 64)
		if err1 != nil || err2 != nil || listen <= start {
			t.Fatalf("boot marks %d, %d (%v, %v)", start, listen, err1, err2)
		}
		t.Logf("guest PID 1 start to agent listening under TCG: %v", time.Duration(listen-start).Round(time.Millisecond))
	})

	// Ctrl-Alt-Del, as Stop sends it: the guest stops everything, leaves
	// its filesystem clean and powers off within the host's grace.
	g.run(t, "sh", "-c", "echo kept > /root/marker")
	if err := g.vm.CtrlAltDel(); err != nil {
		t.Fatal(err)
	}
	// TCG runs the guest many times slower than KVM would.
	exited, err := g.vm.Wait(10 * bootcontract.ShutdownGrace)
	if !exited {
		t.Fatalf("guest did not power off after Ctrl-Alt-Del\ninit log:\n%s", imageFile(t, g.disk, bootcontract.InitLog))
	}
	if err != nil {
		t.Errorf("qemu: %v\n%s", err, g.vm.Log())
	}
	if got := imageFile(t, g.disk, "/root/marker"); got != "kept\n" {
		t.Errorf("file written before the shutdown: %q", got)
	}
	out, err := exec.Command("dumpe2fs", "-h", g.disk).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "Filesystem state:         clean") {
		t.Errorf("root filesystem not clean after shutdown: %v\n%s", err, out)
	}
	if log := imageFile(t, g.disk, bootcontract.InitLog); !strings.Contains(log, "shutting down") {
		t.Errorf("init log shows no shutdown:\n%s", log)
	}
}
