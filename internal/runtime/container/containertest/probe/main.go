// Command probe runs inside a test sandbox and reports what the kernel lets
// it do; the container runtime's tests copy it into the guest.
//
//	probe syscalls   one line per attempt: "<name> <errno name or OK>"
//	probe ping ADDR  one ICMP echo over a datagram socket (no raw socket,
//	                 no capability: what net.ipv4.ping_group_range allows)
package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: probe syscalls | ping ADDR")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "syscalls":
		for _, a := range attempts {
			fmt.Printf("%s %s\n", a.name, result(a.try()))
		}
	case "ping":
		if len(os.Args) != 3 {
			fmt.Fprintln(os.Stderr, "usage: probe ping ADDR")
			os.Exit(2)
		}
		if err := ping(os.Args[2]); err != nil {
			fmt.Fprintln(os.Stderr, "ping:", err)
			os.Exit(1)
		}
	default:
		fmt.Fprintln(os.Stderr, "unknown command", os.Args[1])
		os.Exit(2)
	}
}

func result(err error) string {
	if err == nil {
		return "OK"
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return unix.ErrnoName(errno)
	}
	return "error:" + err.Error()
}

// attempts are syscalls a hostile guest uses to attack the kernel or to
// escape, each made so that it succeeds for a root without capabilities
// beyond the sandbox's where nothing filters it.
var attempts = []struct {
	name string
	try  func() error
}{
	// A new user namespace hands out every capability inside it: the
	// first step of most container escapes through kernel bugs.
	{"clone-newuser", func() error { return forkIn(unix.CLONE_NEWUSER) }},
	{"keyctl", func() error {
		_, err := unix.KeyctlGetKeyringID(unix.KEY_SPEC_SESSION_KEYRING, true)
		return err
	}},
	{"add_key", func() error {
		_, err := unix.AddKey("user", "atelier-probe", []byte("x"), unix.KEY_SPEC_PROCESS_KEYRING)
		return err
	}},
	{"userfaultfd", func() error {
		fd, _, errno := unix.Syscall(unix.SYS_USERFAULTFD, unix.O_CLOEXEC|uffdUserModeOnly, 0, 0)
		return closeFd(int(fd), errno)
	}},
	{"perf_event_open", func() error {
		attr := unix.PerfEventAttr{Type: unix.PERF_TYPE_SOFTWARE, Config: unix.PERF_COUNT_SW_TASK_CLOCK,
			Bits: unix.PerfBitDisabled | unix.PerfBitExcludeKernel | unix.PerfBitExcludeHv}
		attr.Size = uint32(unsafe.Sizeof(attr))
		fd, err := unix.PerfEventOpen(&attr, 0, -1, -1, unix.PERF_FLAG_FD_CLOEXEC)
		if err == nil {
			unix.Close(fd)
		}
		return err
	}},
	{"io_uring_setup", func() error {
		var params [120]byte
		fd, _, errno := unix.Syscall(unix.SYS_IO_URING_SETUP, 1, uintptr(unsafe.Pointer(&params)), 0)
		return closeFd(int(fd), errno)
	}},
	{"unshare-mount", func() error { return forkIn(unix.CLONE_NEWNS) }},
	{"mount-proc", func() error {
		dir, err := os.MkdirTemp("", "probe-")
		if err != nil {
			return err
		}
		defer os.Remove(dir)
		err = unix.Mount("proc", dir, "proc", 0, "")
		if err == nil {
			unix.Unmount(dir, unix.MNT_DETACH)
		}
		return err
	}},
	{"fsopen", func() error {
		fd, err := unix.Fsopen("tmpfs", unix.FSOPEN_CLOEXEC)
		if err == nil {
			unix.Close(fd)
		}
		return err
	}},
	{"kexec_load", func() error {
		_, _, errno := unix.Syscall6(unix.SYS_KEXEC_LOAD, 0, 0, 0, 0, 0, 0)
		return errnoErr(errno)
	}},
	{"open_by_handle_at", func() error {
		// A handle for inode 2 (a filesystem root), as the "shocker"
		// escape forges them.
		h := unix.NewFileHandle(1, []byte{2, 0, 0, 0, 0, 0, 0, 0})
		fd, err := unix.OpenByHandleAt(unix.AT_FDCWD, h, unix.O_RDONLY)
		if err == nil {
			unix.Close(fd)
		}
		return err
	}},
	{"bpf", func() error {
		_, _, errno := unix.Syscall(unix.SYS_BPF, unix.BPF_MAP_CREATE, 0, 0)
		return errnoErr(errno)
	}},
	{"init_module", func() error {
		_, _, errno := unix.Syscall(unix.SYS_INIT_MODULE, 0, 0, 0)
		return errnoErr(errno)
	}},
	{"setns", func() error {
		f, err := os.Open("/proc/self/ns/net")
		if err != nil {
			return err
		}
		defer f.Close()
		_, _, errno := unix.Syscall(unix.SYS_SETNS, f.Fd(), unix.CLONE_NEWNET, 0)
		return errnoErr(errno)
	}},
	// Allowed, as a control: the filter is not a blanket refusal.
	{"getpid", func() error { unix.Getpid(); return nil }},
}

func errnoErr(e syscall.Errno) error {
	if e == 0 {
		return nil
	}
	return e
}

func closeFd(fd int, e syscall.Errno) error {
	if e != 0 {
		return e
	}
	unix.Close(fd)
	return nil
}

// forkIn forks a child into new namespaces of flags; the child exits at
// once. A fork, not unshare: a Go process has threads, and unshare of a
// user namespace needs a single-threaded caller.
func forkIn(flags uintptr) error {
	pid, errno := rawFork(flags)
	if errno != 0 {
		return errno
	}
	var ws unix.WaitStatus
	_, err := unix.Wait4(int(pid), &ws, 0, nil)
	return err
}

//go:norace
//go:nosplit
func rawFork(flags uintptr) (uintptr, syscall.Errno) {
	pid, _, errno := syscall.RawSyscall6(syscall.SYS_CLONE, flags|uintptr(syscall.SIGCHLD), 0, 0, 0, 0, 0)
	if errno == 0 && pid == 0 {
		syscall.RawSyscall(syscall.SYS_EXIT_GROUP, 0, 0, 0)
	}
	return pid, errno
}

func ping(addr string) error {
	dst := net.ParseIP(addr)
	if dst == nil || dst.To4() == nil {
		return fmt.Errorf("%q is not an IPv4 address", addr)
	}
	c, err := icmp.ListenPacket("udp4", "0.0.0.0")
	if err != nil {
		return err
	}
	defer c.Close()
	msg := icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &icmp.Echo{ID: os.Getpid() & 0xffff, Seq: 1, Data: []byte("atelier")}}
	b, err := msg.Marshal(nil)
	if err != nil {
		return err
	}
	if _, err := c.WriteTo(b, &net.UDPAddr{IP: dst}); err != nil {
		return err
	}
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	buf := make([]byte, 1500)
	for {
		n, _, err := c.ReadFrom(buf)
		if err != nil {
			return err
		}
		m, err := icmp.ParseMessage(1, buf[:n])
		if err == nil && m.Type == ipv4.ICMPTypeEchoReply {
			fmt.Println("reply from", addr)
			return nil
		}
	}
}

// uffdUserModeOnly is UFFD_USER_MODE_ONLY (Linux 5.11): faults in user
// memory only, which needs no privilege.
const uffdUserModeOnly = 1
