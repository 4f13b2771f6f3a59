package guest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"atelier/internal/agent"
	"atelier/internal/bootcontract"
)

// processStart is CLOCK_BOOTTIME when this process began running Go code:
// the boot's "PID 1 started" mark.
var processStart = boottime()

const (
	defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	// A VM guest's shutdown must fit in the host's wait after
	// Ctrl-Alt-Del (bootcontract.ShutdownGrace): serve's own grace, then
	// every other process's, then SIGKILL, sync and the read-only remount.
	vmServeStopGrace = 2 * time.Second
	vmOthersGrace    = time.Second
	vmKillWait       = 500 * time.Millisecond
	// ext4's EXT4_IOC_RESIZE_FS, _IOW('f', 16, __u64): online growth.
	ext4IocResizeFS = 0x40086610
	ext4SuperMagic  = 0xEF53
)

// InitOptions configures RunInit.
type InitOptions struct {
	// ServeArgv is the agent command init supervises; in a VM guest the
	// contract's arguments (vsock port, sandbox id, ...) are appended.
	ServeArgv []string
	// KernelCmdline means a VM guest: as PID 1, read the boot contract
	// from /proc/cmdline, set up host name and network files, grow the root
	// filesystem, enable swap, and at the end shut the machine down. Off in
	// containers, where the command line is the host's; ignored by a
	// process that is not PID 1.
	KernelCmdline bool
	Logger        *slog.Logger
	// LogFile is closed before the root filesystem is remounted read-only.
	LogFile io.Closer
}

// RunInit is the PID 1 path: mounts, host name and network files (before
// the agent, so that nothing the host runs once the agent answers sees a
// half-configured guest), the agent, then root filesystem growth and swap
// in the background, then supervision until SIGTERM or SIGINT (in a VM,
// Ctrl-Alt-Del), then, in a VM, the shutdown sequence.
func RunInit(ctx context.Context, o InitOptions) error {
	log := o.Logger
	if os.Getenv("PATH") == "" {
		os.Setenv("PATH", defaultPath)
	}
	pid1 := os.Getpid() == 1
	// Mounting is PID 1's job; anywhere else it would shadow the host's
	// directories.
	if pid1 {
		mountMissing(log)
	}
	argv := append([]string(nil), o.ServeArgv...)
	grace := serveStopGrace
	// PID 1 of the whole machine, not of a pid namespace: only that one may
	// take Ctrl-Alt-Del, remount the root read-only and reboot.
	realInit := false
	if o.KernelCmdline && !pid1 {
		// Anywhere but PID 1 the command line is the host's, and acting on
		// it would rename the host and rewrite its /etc.
		log.Warn("not PID 1: ignoring the kernel command line")
	}
	if o.KernelCmdline && pid1 {
		realInit = takeCtrlAltDel()
		recordBootTime(log, bootcontract.InitStartFile, processStart)
		raw, err := os.ReadFile("/proc/cmdline")
		if err != nil {
			log.Error("read kernel command line", "err", err)
		}
		b, err := bootcontract.Parse(string(raw))
		if err != nil {
			log.Error("kernel command line breaks the boot contract", "err", err)
		}
		argv = append(argv, vmServeArgs(b)...)
		host := b.Hostname
		if host == "" && b.ID != "" {
			host = bootcontract.Hostname(b.ID)
		}
		if host != "" {
			if err := unix.Sethostname([]byte(host)); err != nil {
				log.Warn("set hostname", "hostname", host, "err", err)
			}
		}
		if b.HasIP {
			setupNetwork(ctx, log, b, host)
		}
		grace = vmServeStopGrace
		go func() {
			growRootFS(log)
			enableSwap(log, bootcontract.SwapFile)
		}()
	}

	sctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	_, err := supervise(sctx, initConfig{serveArgv: argv, serveEnv: os.Environ(), log: log, stopGrace: grace})
	unix.Sync()
	if realInit {
		shutdownVM(log, o.LogFile)
	}
	return err
}

// vmServeArgs are the serve flags the boot contract implies.
func vmServeArgs(b bootcontract.Boot) []string {
	args := []string{
		"--vsock-port", strconv.FormatUint(uint64(b.AgentPort), 10),
		"--virtio-serial-port", bootcontract.TestChannelName,
	}
	if b.ID != "" {
		args = append(args, "--sandbox-id", b.ID)
	}
	if b.HasIP {
		args = append(args, "--manage-network")
	}
	return args
}

// takeCtrlAltDel turns Ctrl-Alt-Del (Firecracker's SendCtrlAltDel) into a
// SIGINT to PID 1 instead of the kernel's immediate, unsynced reboot. It
// fails inside a pid namespace, which is how init knows it is not the
// machine's PID 1.
func takeCtrlAltDel() bool {
	return unix.Reboot(unix.LINUX_REBOOT_CMD_CAD_OFF) == nil
}

// setupNetwork applies ip= when the kernel has not (a kernel without
// CONFIG_IP_PNP), and always writes resolv.conf, hostname and hosts from
// it: the kernel keeps the DNS servers to itself.
func setupNetwork(ctx context.Context, log *slog.Logger, b bootcontract.Boot, host string) {
	dev := b.Device
	if dev == "" {
		dev = bootcontract.Interface
	}
	cfg := agent.NetworkConfig{IP: b.IP.String(), PrefixLen: b.PrefixLen, Hostname: host}
	if b.Gateway.IsValid() {
		cfg.Gateway = b.Gateway.String()
	}
	for _, d := range b.DNS {
		cfg.DNS = append(cfg.DNS, d.String())
	}
	if hasAddress(dev, cfg.IP) {
		if err := writeNetworkFiles(cfg, "/etc"); err != nil {
			log.Error("write network files", "err", err)
			return
		}
		log.Info("network configured by the kernel", "device", dev, "ip", cfg.IP)
		return
	}
	if d, err := applyNetwork(ctx, cfg, dev, "/etc", execRun); err != nil {
		log.Error("configure network", "device", d, "err", err)
		// The files do not depend on the link.
		if err := writeNetworkFiles(cfg, "/etc"); err != nil {
			log.Error("write network files", "err", err)
		}
	} else {
		log.Info("network configured", "device", d, "ip", cfg.IP)
	}
}

// growRootFS grows the filesystem mounted at / to the size of the block
// device holding it, online, with ext4's resize ioctl: no resize2fs needed
// in the image. It finds the device from / itself, never by name.
func growRootFS(log *slog.Logger) {
	var sfs unix.Statfs_t
	if err := unix.Statfs("/", &sfs); err != nil {
		log.Warn("grow root filesystem: statfs", "err", err)
		return
	}
	if sfs.Type != ext4SuperMagic {
		return
	}
	var st unix.Stat_t
	if err := unix.Stat("/", &st); err != nil {
		log.Warn("grow root filesystem: stat", "err", err)
		return
	}
	sysfs := fmt.Sprintf("/sys/dev/block/%d:%d/size", unix.Major(st.Dev), unix.Minor(st.Dev))
	raw, err := os.ReadFile(sysfs)
	if err != nil {
		log.Warn("grow root filesystem: device size", "err", err)
		return
	}
	sectors, err := strconv.ParseUint(strings.TrimSpace(string(raw)), 10, 64)
	if err != nil || sfs.Bsize <= 0 {
		log.Warn("grow root filesystem: device size", "value", string(raw), "err", err)
		return
	}
	blocks := sectors * 512 / uint64(sfs.Bsize)
	f, err := os.Open("/")
	if err != nil {
		log.Warn("grow root filesystem", "err", err)
		return
	}
	defer f.Close()
	start := time.Now()
	// The kernel returns at once when the filesystem already fills the device.
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), ext4IocResizeFS, uintptr(unsafe.Pointer(&blocks))); errno != 0 {
		log.Warn("grow root filesystem", "blocks", blocks, "err", errno)
		return
	}
	var after unix.Statfs_t
	_ = unix.Statfs("/", &after)
	if after.Blocks != sfs.Blocks {
		log.Info("root filesystem grown", "from_blocks", sfs.Blocks, "to_blocks", after.Blocks, "duration", time.Since(start))
	}
}

// enableSwap turns on the image's swap file, if it has one. Making one is
// the image's (or the operator's) choice: creating it at boot would cost
// seconds on the path to a ready agent.
func enableSwap(log *slog.Logger, path string) {
	st, err := os.Lstat(path)
	if err != nil || !st.Mode().IsRegular() {
		return
	}
	p, err := unix.BytePtrFromString(path)
	if err != nil {
		return
	}
	if _, _, errno := unix.Syscall(unix.SYS_SWAPON, uintptr(unsafe.Pointer(p)), 0, 0); errno != 0 && errno != unix.EBUSY {
		log.Warn("enable swap", "path", path, "err", errno)
		return
	}
	log.Info("swap enabled", "path", path, "bytes", st.Size())
}

func disableSwap(path string) {
	if p, err := unix.BytePtrFromString(path); err == nil {
		_, _, _ = unix.Syscall(unix.SYS_SWAPOFF, uintptr(unsafe.Pointer(p)), 0, 0)
	}
}

// shutdownVM ends the machine cleanly once serve has stopped: every other
// process gets SIGTERM, then SIGKILL; the root filesystem is synced and
// remounted read-only (so it is clean without a journal replay); then a
// reboot, which Firecracker (reboot=k) turns into its own exit.
func shutdownVM(log *slog.Logger, logFile io.Closer) {
	log.Info("shutting down")
	signalAll(unix.SIGTERM, vmOthersGrace)
	signalAll(unix.SIGKILL, vmKillWait)
	disableSwap(bootcontract.SwapFile)
	if logFile != nil {
		_ = logFile.Close()
	}
	unix.Sync()
	if err := unix.Mount("", "/", "", unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
		log.Warn("remount root read-only", "err", err)
	}
	unix.Sync()
	if err := unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART); err != nil {
		log.Error("reboot", "err", err)
	}
}

// signalAll sends sig to every process but init and reaps until none is
// left or wait has passed.
func signalAll(sig unix.Signal, wait time.Duration) {
	if err := unix.Kill(-1, sig); errors.Is(err, unix.ESRCH) {
		return
	}
	deadline := time.Now().Add(wait)
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if errors.Is(err, unix.ECHILD) {
			return
		}
		if pid > 0 {
			continue
		}
		if time.Now().After(deadline) {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func boottime() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return 0
	}
	return ts.Nano()
}

// recordBootTime writes a boot timing mark (CLOCK_BOOTTIME, ns) under
// bootcontract.RunDir, for the boot benchmarks.
func recordBootTime(log *slog.Logger, name string, ns int64) {
	if err := os.MkdirAll(bootcontract.RunDir, 0o755); err != nil {
		log.Debug("record boot time", "err", err)
		return
	}
	if err := os.WriteFile(filepath.Join(bootcontract.RunDir, name), []byte(strconv.FormatInt(ns, 10)+"\n"), 0o644); err != nil {
		log.Debug("record boot time", "err", err)
	}
}

// openInitLog opens bootcontract.InitLog for this boot (the previous
// boot's is replaced).
func openInitLog() (*os.File, error) {
	if err := os.MkdirAll(filepath.Dir(bootcontract.InitLog), 0o755); err != nil {
		return nil, err
	}
	return os.OpenFile(bootcontract.InitLog, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
}
