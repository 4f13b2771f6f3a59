package firecracker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// errExited is a firecracker process that ended while we waited on it.
var errExited = errors.New("firecracker process exited")

// jailSetup is a jailed launch: the jailed uid/gid, the limits and what
// goes into the jail besides the kernel and the log.
type jailSetup struct {
	uid           int
	vcpus, memMiB int
	files         []jailFile
}

// launch starts firecracker for id in dir (its working directory, against
// which the relative vsock path resolves), through the jailer when js is
// set (then the jail's root is the working directory), and writes its pid
// file. The process gets its own session, so neither a signal to the
// manager's process group nor the manager's exit reaches it: the manager
// can be restarted without stopping sandboxes. It is not tied to any
// context.
func (d *Driver) launch(id, dir string, js *jailSetup) (int, error) {
	sock, logPath := d.apiSock(id), d.logPath(id)
	if err := os.MkdirAll(d.opts.SocketDir, 0o700); err != nil {
		return 0, fmt.Errorf("create socket dir: %w", err)
	}
	if err := os.MkdirAll(d.opts.LogDir, 0o750); err != nil {
		return 0, fmt.Errorf("create log dir: %w", err)
	}
	// Firecracker refuses to bind over a leftover socket.
	for _, p := range []string{sock, d.vsockPath(id)} {
		if err := removeFile(p); err != nil {
			return 0, fmt.Errorf("remove stale socket: %w", err)
		}
	}
	devnull, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		return 0, fmt.Errorf("open %s: %w", os.DevNull, err)
	}
	defer devnull.Close()

	// Firecracker's log (--log-path) is a FIFO, read with its stdout (the
	// guest's serial console) by the sandbox's log keeper, which writes
	// and rotates <LogDir>/<id>.log: neither Firecracker nor the guest
	// holds a host file it could grow without bound. A jailed one finds
	// the FIFO in its jail; it was never given a path to a host file.
	fifoPath := d.logFIFO(id)
	if js != nil {
		if err := d.prepareJail(id, js.uid, js.files); err != nil {
			return 0, err
		}
		fifoPath = filepath.Join(d.chrootDir(id), jailLog)
	} else if err := removeFile(fifoPath); err != nil {
		return 0, fmt.Errorf("remove stale log fifo: %w", err)
	}
	fifo, err := makeLogFIFO(fifoPath, js)
	if err != nil {
		return 0, err
	}
	defer fifo.Close()
	logw, err := d.opts.Logs.Start(context.Background(), logPath, fifo)
	if err != nil {
		return 0, fmt.Errorf("start log keeper: %w", err)
	}
	defer logw.Close()

	argv := []string{d.opts.Binary,
		"--api-sock", sock,
		"--log-path", fifoPath,
		"--level", "Warning",
		"--id", id}
	if js != nil {
		argv, dir = d.jailerArgs(id, js.uid, js.vcpus, js.memMiB), "/"
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = dir
	// Firecracker needs no environment; the manager's holds secrets.
	cmd.Env = append([]string{}, d.env...)
	// Its output goes to the keeper, a process of its own, never to the
	// manager: a pipe to the manager would break when it restarts.
	cmd.Stdin, cmd.Stdout, cmd.Stderr = devnull, logw, logw
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("start firecracker: %w", err)
	}
	pid := cmd.Process.Pid
	exited := make(chan struct{})
	d.mu.Lock()
	d.children[pid] = exited
	d.mu.Unlock()
	// Reap it while this manager lives; after a restart init does.
	go func() {
		_ = cmd.Wait()
		d.mu.Lock()
		delete(d.children, pid)
		d.mu.Unlock()
		close(exited)
	}()
	if err := writePIDFile(d.pidPath(id), pid); err != nil {
		_ = cmd.Process.Kill()
		return 0, err
	}
	return pid, nil
}

// logFIFO is the FIFO an unjailed Firecracker logs to.
func (d *Driver) logFIFO(id string) string { return filepath.Join(d.opts.SocketDir, id+".log.fifo") }

// makeLogFIFO makes the FIFO Firecracker logs to, owned by the jailed uid
// when js is set, and opens it read-write for the keeper: held open by a
// writer of its own, it never reads as ended while Firecracker has not
// opened it yet or closes it. The jail is fresh and nothing runs in it
// yet; the FIFO is still opened beneath it without following a link.
func makeLogFIFO(path string, js *jailSetup) (*os.File, error) {
	if err := unix.Mkfifo(path, 0o600); err != nil {
		return nil, fmt.Errorf("make log fifo: %w", err)
	}
	var fd int
	var err error
	if js != nil {
		if err := os.Lchown(path, js.uid, js.uid); err != nil {
			return nil, fmt.Errorf("make log fifo: %w", err)
		}
		fd, err = openInJail(filepath.Dir(path), filepath.Base(path), unix.O_RDWR|unix.O_NONBLOCK)
	} else {
		fd, err = unix.Open(path, unix.O_RDWR|unix.O_NONBLOCK|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	}
	if err != nil {
		return nil, fmt.Errorf("open log fifo: %w", err)
	}
	f := os.NewFile(uintptr(fd), path)
	if st, err := f.Stat(); err != nil || st.Mode()&os.ModeNamedPipe == 0 {
		f.Close()
		return nil, fmt.Errorf("log fifo %s is not a fifo", path)
	}
	return f, nil
}

func writePIDFile(path string, pid int) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(strconv.Itoa(pid)+"\n"), 0o600); err != nil {
		return fmt.Errorf("write pid file: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("write pid file: %w", err)
	}
	return nil
}

// readPIDFile returns the pid recorded for id; ok is false when there is no
// usable pid file.
func (d *Driver) readPIDFile(id string) (pid int, ok bool) {
	b, err := os.ReadFile(d.pidPath(id))
	if err != nil {
		return 0, false
	}
	pid, err = strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 {
		return 0, false
	}
	return pid, true
}

// owns reports whether pid is a live firecracker (or the jailer about to
// become one) of sandbox id. A pid file can outlive its process and the pid
// can be reused by anything (weak point 28), so the command line is the
// proof: a zombie or another program, even another firecracker, does not
// match.
func (d *Driver) owns(pid int, id string) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil {
		return false
	}
	switch d.cmdlineKind(b, id) {
	case runDirect:
		return true
	case runJailer:
		// Not chrooted yet: its chroot base says whose it is.
		return d.opts.ChrootBase != "" && argValue(b, "--chroot-base-dir") == d.opts.ChrootBase
	case runJailed:
		// Every jailed firecracker has the same API socket path; its root
		// being this driver's jail for id is the proof. The root is
		// compared as a file, not a path: the real jailer pivots into the
		// jail in a mount namespace of its own, where the path reads "/".
		var proot, jail unix.Stat_t
		if d.opts.ChrootBase == "" || unix.Stat("/proc/"+strconv.Itoa(pid)+"/root", &proot) != nil ||
			unix.Stat(d.chrootDir(id), &jail) != nil {
			return false
		}
		return proot.Dev == jail.Dev && proot.Ino == jail.Ino
	}
	return false
}

// How a process runs a sandbox's firecracker.
type runKind int

const (
	runNone   runKind = iota
	runDirect         // firecracker --api-sock <SocketDir>/<id>.sock
	runJailer         // the jailer, before it becomes firecracker
	runJailed         // firecracker in its jail
)

// cmdlineKind recognises both ways a sandbox's firecracker runs, whatever
// the current configuration (a manager restarted with the jailer turned
// on must still find the firecrackers it started without): directly, with
// --api-sock <SocketDir>/<id>.sock, or jailed, with --id <id> and the
// jail's API socket path.
func (d *Driver) cmdlineKind(raw []byte, id string) runKind {
	args := strings.Split(string(bytes.TrimRight(raw, "\x00")), "\x00")
	if len(args) < 3 {
		return runNone
	}
	base := filepath.Base(args[0])
	jailer := d.opts.Jailer != "" && base == filepath.Base(d.opts.Jailer) || strings.HasPrefix(base, "jailer")
	if !jailer && base != filepath.Base(d.opts.Binary) && base != d.execName() && !strings.HasPrefix(base, "firecracker") {
		return runNone
	}
	sock, fid := argValue(raw, "--api-sock"), argValue(raw, "--id")
	switch {
	case sock == d.apiSock(id) && !jailer:
		return runDirect
	case fid == id && sock == jailAPISock && jailer:
		return runJailer
	case fid == id && sock == jailAPISock:
		return runJailed
	}
	return runNone
}

// argValue is the value after the first occurrence of flag in a NUL-
// separated command line.
func argValue(raw []byte, flag string) string {
	args := strings.Split(string(bytes.TrimRight(raw, "\x00")), "\x00")
	for i := 1; i+1 < len(args); i++ {
		if args[i] == flag {
			return args[i+1]
		}
	}
	return ""
}

// find returns the live firecracker of id: the one its pid file names or,
// when that is gone or stale, one found by its command line, so a process
// whose pid file was lost is still stopped rather than leaked.
func (d *Driver) find(id string) (int, bool) {
	if pid, ok := d.readPIDFile(id); ok && d.owns(pid, id) {
		return pid, true
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0, false
	}
	self := os.Getpid()
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		if d.owns(pid, id) {
			return pid, true
		}
	}
	return 0, false
}

// kill sends SIGKILL to the process group of pid, and to pid itself, if
// pid still is our firecracker. The check is made while holding a pidfd
// (os.FindProcess opens one on Linux), so the signal cannot reach a process
// that took the pid over after the check.
func (d *Driver) kill(pid int, id string) error {
	p, err := os.FindProcess(pid)
	if err != nil {
		return nil
	}
	defer p.Release()
	if !d.owns(pid, id) {
		return nil
	}
	if err := syscall.Kill(-pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("kill firecracker process group %d: %w", pid, err)
	}
	if err := p.Signal(syscall.SIGKILL); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("kill firecracker %d: %w", pid, err)
	}
	return nil
}

// exited reports, without waiting, whether pid is no longer our firecracker.
func (d *Driver) exited(pid int, id string) bool {
	d.mu.Lock()
	ch, child := d.children[pid]
	d.mu.Unlock()
	if child {
		select {
		case <-ch:
			return true
		default:
			return false
		}
	}
	return !d.owns(pid, id)
}

// waitGone waits up to timeout for pid to stop being our firecracker. Our
// own children are waited on until reaped; others (started before a
// manager restart) are polled.
func (d *Driver) waitGone(pid int, id string, timeout time.Duration) bool {
	d.mu.Lock()
	ch, child := d.children[pid]
	d.mu.Unlock()
	t := time.NewTimer(timeout)
	defer t.Stop()
	if child {
		select {
		case <-ch:
			return true
		case <-t.C:
			return false
		}
	}
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for {
		if !d.owns(pid, id) {
			return true
		}
		select {
		case <-t.C:
			return !d.owns(pid, id)
		case <-tick.C:
		}
	}
}

// removeFile removes path; an absent file is success.
func removeFile(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// logTail returns the end of a log file, for errors about a process that
// died before it could answer.
func logTail(path string, max int64) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil && st.Size() > max {
		if _, err := f.Seek(-max, io.SeekEnd); err != nil {
			return ""
		}
	}
	b, err := io.ReadAll(io.LimitReader(f, max))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}
