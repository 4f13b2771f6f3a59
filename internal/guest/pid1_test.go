package guest

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"atelier/internal/bootcontract"
	"atelier/internal/ids"
	"atelier/internal/network"
	"atelier/internal/vmtest"
)

// BenchmarkInitToListening measures the part of a boot that carries over
// to Firecracker unchanged: the agent as PID 1, from its first Go
// instruction to the agent accepting connections, at native speed. The
// test image is loop-mounted and the agent runs as PID 1 of new pid, mount,
// UTS and IPC namespaces, chrooted there, with a kernel command line made
// by the boot contract bind-mounted over /proc/cmdline, in a network
// namespace whose eth0 already has its address (as the kernel's ip= leaves
// it). Two differences from a VM, both to keep the host out of it: /dev is
// a small tmpfs (devtmpfs would show the host's /dev/vsock, and the agent
// would listen on the host's vsock), so the agent listens on a unix socket
// instead, given after "--" to `init`; and, being PID 1 of a pid namespace
// rather than of a machine, it neither takes Ctrl-Alt-Del nor reboots.
// Target: at most 50 ms.
func BenchmarkInitToListening(b *testing.B) {
	root, ns := nsGuest(b)
	// Several boots per iteration: `make bench` runs one iteration, and
	// the median is steadier than a single boot.
	var times []time.Duration
	for b.Loop() {
		for range 9 {
			d, err := bootOnce(root, ns)
			if err != nil {
				b.Fatal(err)
			}
			times = append(times, d)
		}
	}
	sort.Slice(times, func(i, j int) bool { return times[i] < times[j] })
	p50 := times[len(times)/2]
	b.ReportMetric(float64(p50.Microseconds())/1000, "init-to-listen-ms")
	b.ReportMetric(float64(p50.Microseconds())/1000/50, "x-target")
}

// The kernel starts init with no arguments, under whatever name the image
// gave the agent: being PID 1 is what makes it init.
func TestAgentIsInitAsPID1UnderAnyName(t *testing.T) {
	root, ns := nsGuest(t)
	name := "/sbin/some-other-init"
	if out, err := exec.Command("cp", filepath.Join(root, bootcontract.InitPath), filepath.Join(root, name)).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v: %s", err, out)
	}
	cmd := pid1Cmd(root, name)
	var out syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := network.Do(ns, cmd.Start); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}()
	// It reads the contract and starts the agent (which, with no vsock
	// device here, has nothing to listen on: init restarts it).
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(out.String(), `"msg":"agent started"`) {
		if time.Now().After(deadline) {
			t.Fatalf("no agent started by %s as PID 1:\n%s", name, out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	host, err := os.ReadFile(fmt.Sprintf("/proc/%d/root/etc/hostname", cmd.Process.Pid))
	if err != nil || string(host) != bootcontract.Hostname(guestID)+"\n" {
		t.Errorf("/etc/hostname %q, %v: init did not apply the contract", host, err)
	}
	if log, _ := os.ReadFile(filepath.Join(root, bootcontract.InitLog)); !strings.Contains(string(log), "agent started") {
		t.Errorf("init log on the root filesystem: %q", log)
	}
}

// syncBuffer is written by the command's output copier while the test
// reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// guestID is the sandbox id on nsGuest's command line.
const guestID = "benchguest01"

// nsGuest prepares a guest root for an agent run as PID 1 of new
// namespaces: the test image loop-mounted (private: nothing mounted below
// propagates back), a contract command line bind-mounted over its
// /proc/cmdline, a small /dev, and a network namespace whose eth0 already
// has its address.
func nsGuest(t testing.TB) (string, netns.NsHandle) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("requires root: namespaces, loop mounts, chroot")
	}
	dir := t.TempDir()
	image := vmtest.BuildImage(t, dir)
	disk := filepath.Join(dir, "disk.ext4")
	root := filepath.Join(dir, "root")
	if out, err := exec.Command("cp", "--sparse=always", image, disk).CombinedOutput(); err != nil {
		t.Fatalf("copy image: %v: %s", err, out)
	}
	if err := os.MkdirAll(root, 0o755); err != nil {
		t.Fatal(err)
	}
	mount := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("mount", args...).CombinedOutput(); err != nil {
			t.Fatalf("mount %v: %v: %s", args, err, out)
		}
	}
	mount("-o", "loop", disk, root)
	t.Cleanup(func() {
		if out, err := exec.Command("umount", "-R", "-l", root).CombinedOutput(); err != nil {
			t.Errorf("umount: %v: %s", err, out)
		}
	})
	mount("--make-rprivate", root)

	cmdline, err := bootcontract.Cmdline(bootcontract.Guest{
		ID: guestID, IP: netip.MustParseAddr("172.16.0.10"), Gateway: netip.MustParseAddr("172.16.0.1"), PrefixLen: 24,
		DNS: []netip.Addr{netip.MustParseAddr("192.0.2.53")},
	})
	if err != nil {
		t.Fatal(err)
	}
	cmdFile := filepath.Join(dir, "cmdline")
	if err := os.WriteFile(cmdFile, []byte(cmdline+" "+bootcontract.VMMArgs+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	mount("-t", "proc", "proc", filepath.Join(root, "proc"))
	mount("--bind", cmdFile, filepath.Join(root, "proc", "cmdline"))
	mount("-t", "tmpfs", "-o", "mode=0755", "tmpfs", filepath.Join(root, "dev"))
	for _, n := range []struct {
		name         string
		major, minor uint32
	}{{"null", 1, 3}, {"zero", 1, 5}, {"random", 1, 8}, {"urandom", 1, 9}, {"tty", 5, 0}} {
		if err := unix.Mknod(filepath.Join(root, "dev", n.name), unix.S_IFCHR|0o666, int(unix.Mkdev(n.major, n.minor))); err != nil {
			t.Fatal(err)
		}
	}

	nsName := "atlt-" + ids.New(6) + "-init"
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
	run("netns", "add", nsName)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", nsName).Run() })
	for _, args := range [][]string{
		{"link", "add", "eth0", "type", "veth", "peer", "name", "peer0"},
		{"addr", "add", "172.16.0.10/24", "dev", "eth0"},
		{"link", "set", "lo", "up"}, {"link", "set", "eth0", "up"},
	} {
		run(append([]string{"-n", nsName}, args...)...)
	}
	ns, err := netns.GetFromPath("/var/run/netns/" + nsName)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	return root, ns
}

// pid1Cmd runs argv as PID 1 of new pid, mount, UTS and IPC namespaces,
// chrooted into root (start it inside the guest's network namespace).
func pid1Cmd(root string, argv ...string) *exec.Cmd {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Chroot:     root,
		Cloneflags: syscall.CLONE_NEWPID | syscall.CLONE_NEWNS | syscall.CLONE_NEWUTS | syscall.CLONE_NEWIPC,
	}
	cmd.Dir = "/"
	return cmd
}

// bootOnce starts the agent as PID 1 in root and returns the time from its
// start (its own boot mark) to its socket accepting a connection.
func bootOnce(root string, ns netns.NsHandle) (time.Duration, error) {
	const sock = "/run/atelier-bench.sock"
	cmd := pid1Cmd(root, bootcontract.InitPath, "init", "--kernel-cmdline=true", "--", "--unix", sock)
	cmd.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := network.Do(ns, cmd.Start); err != nil {
		return 0, fmt.Errorf("start init: %w", err)
	}
	defer func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}()
	// Its /run and socket are in its own mount namespace: reach them
	// through its root.
	proot := fmt.Sprintf("/proc/%d/root", cmd.Process.Pid)
	deadline := time.Now().Add(20 * time.Second)
	for {
		if c, err := net.Dial("unix", proot+sock); err == nil {
			listening := boottimeNS()
			c.Close()
			raw, err := os.ReadFile(proot + bootcontract.RunDir + "/" + bootcontract.InitStartFile)
			if err != nil {
				return 0, fmt.Errorf("init start mark: %w\n%s", err, out.String())
			}
			start, err := strconv.ParseInt(strings.TrimSpace(string(raw)), 10, 64)
			if err != nil {
				return 0, err
			}
			return time.Duration(listening - start), nil
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("agent not listening after 20s:\n%s", out.String())
		}
		time.Sleep(200 * time.Microsecond)
	}
}

func boottimeNS() int64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts)
	return ts.Nano()
}
