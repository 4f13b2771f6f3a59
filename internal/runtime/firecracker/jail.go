package firecracker

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"atelier/internal/ids"
	"atelier/internal/sandbox"
)

// The jailer (Firecracker's docs/jailer.md) starts each Firecracker in a
// chroot of its own, <ChrootBase>/<exec name>/<id>/root, as a uid and gid
// of its own, in cgroups limited to the sandbox's vCPUs and memory, with a
// copy of the binary. A guest that escapes into its VMM is then an
// unprivileged user who sees only its own jail.
//
// What the VM needs from the host is put in the jail before the jailer
// runs: the kernel (a hard link, read-only for the jailed user), the root
// volume (a device node for a block device; for a file a hard link, or a
// bind mount across filesystems, owned by the jailed user) and a FIFO for
// its log, read by the sandbox's log keeper (never a host file).
// What Firecracker creates in the jail, its API and vsock sockets, is
// hard-linked back to the seed's paths in SocketDir, opened beneath the
// jail without following a symlink: the jailed user owns the jail and could
// otherwise point the manager at any socket on the host.

// Paths inside a jail, as the jailed Firecracker sees them.
const (
	jailKernel  = "/vmlinux"
	jailDisk    = "/rootfs"
	jailLog     = "/firecracker.log"
	jailAPISock = "/run/firecracker.socket"
	jailState   = "/snapshot.state"
	jailMem     = "/snapshot.mem"
)

// DefaultCgroupParent is the jailer's --parent-cgroup: the sandboxes'
// cgroups sit outside the manager's, so stopping the manager's service
// stops none of them.
const DefaultCgroupParent = "atelier-firecracker"

const (
	cpuPeriodUS = 100000
	// memOverheadMiB is Firecracker's own memory on top of the guest's.
	memOverheadMiB = 128
	// cgroupRemoveWait bounds the wait for a just-killed process to leave
	// its cgroup.
	cgroupRemoveWait = 2 * time.Second
)

var errNotYet = errors.New("not there yet")

func (d *Driver) jailed() bool { return d.opts.Jailer != "" }

// execName is the name the jailer gives the binary's copy and the jail's
// middle directory: the file name of the binary, symlinks resolved.
func (d *Driver) execName() string {
	if p, err := filepath.EvalSymlinks(d.opts.Binary); err == nil {
		return filepath.Base(p)
	}
	return filepath.Base(d.opts.Binary)
}

func (d *Driver) jailDir(id string) string {
	return filepath.Join(d.opts.ChrootBase, d.execName(), id)
}

func (d *Driver) chrootDir(id string) string { return filepath.Join(d.jailDir(id), "root") }

// jailID is the uid and gid of a sandbox's jailed Firecracker: the base
// plus the host part of its address, unique among running sandboxes
// because leases are.
func (d *Driver) jailID(inst sandbox.Instance) (int, error) {
	ip, err := netip.ParseAddr(inst.IP)
	if err != nil || !ip.Is4() || inst.PrefixLen < 16 || inst.PrefixLen > 32 {
		return 0, fmt.Errorf("jail uid: guest ip %q/%d is not an IPv4 lease in a /16 or smaller", inst.IP, inst.PrefixLen)
	}
	b := ip.As4()
	n := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	host := n & (1<<(32-inst.PrefixLen) - 1)
	return int(d.opts.UIDBase + host), nil
}

// cgroupVersion is the hierarchy the jailer should use: 2 when the
// unified hierarchy has the cpu and memory controllers, else 1.
func cgroupVersion() int {
	b, err := os.ReadFile("/sys/fs/cgroup/cgroup.controllers")
	if err != nil {
		return 1
	}
	f := strings.Fields(string(b))
	has := func(c string) bool {
		for _, x := range f {
			if x == c {
				return true
			}
		}
		return false
	}
	if has("cpu") && has("memory") {
		return 2
	}
	return 1
}

// cgroupLimits are the jailer's --cgroup values for a sandbox: its vCPUs
// as a CPU quota, its memory plus Firecracker's own as a memory limit.
func cgroupLimits(version, vcpus, memMiB int) []string {
	if vcpus < 1 || memMiB < 1 {
		return nil
	}
	quota := vcpus * cpuPeriodUS
	mem := int64(memMiB+max(memOverheadMiB, memMiB/16)) << 20
	if version == 2 {
		return []string{
			fmt.Sprintf("cpu.max=%d %d", quota, cpuPeriodUS),
			fmt.Sprintf("memory.max=%d", mem),
		}
	}
	return []string{
		fmt.Sprintf("cpu.cfs_period_us=%d", cpuPeriodUS),
		fmt.Sprintf("cpu.cfs_quota_us=%d", quota),
		fmt.Sprintf("memory.limit_in_bytes=%d", mem),
	}
}

// jailerArgs is the jailer's command line for a sandbox.
func (d *Driver) jailerArgs(id string, uid, vcpus, memMiB int) []string {
	v := d.opts.CgroupVersion
	if v == 0 {
		v = cgroupVersion()
	}
	u := strconv.Itoa(uid)
	args := []string{d.opts.Jailer,
		"--id", id,
		"--exec-file", d.opts.Binary,
		"--uid", u, "--gid", u,
		"--chroot-base-dir", d.opts.ChrootBase,
		"--cgroup-version", strconv.Itoa(v),
		"--parent-cgroup", d.opts.CgroupParent,
	}
	for _, c := range cgroupLimits(v, vcpus, memMiB) {
		args = append(args, "--cgroup", c)
	}
	// After "--": Firecracker's own arguments. The jailer adds --id.
	return append(args, "--", "--api-sock", jailAPISock, "--log-path", jailLog, "--level", "Warning")
}

// jailFile is something put into a jail before the jailer runs.
type jailFile struct {
	src, dst string
	// writable files and devices are given to the jailed user.
	writable bool
}

// prepareJail makes a fresh jail for id holding the kernel and files: whatever an earlier run left is removed first.
func (d *Driver) prepareJail(id string, uid int, files []jailFile) error {
	if err := d.removeJail(id); err != nil {
		return fmt.Errorf("clear old jail: %w", err)
	}
	root := d.chrootDir(id)
	if err := os.MkdirAll(root, 0o700); err != nil {
		return fmt.Errorf("create jail: %w", err)
	}
	if err := sameFilesystem(d.opts.ChrootBase, d.opts.SocketDir); err != nil {
		return err
	}
	// The log is not among them: launch makes a FIFO there.
	files = append([]jailFile{{src: d.opts.Kernel, dst: jailKernel}}, files...)
	for _, f := range files {
		if err := exposeInJail(root, f, uid); err != nil {
			return fmt.Errorf("put %s in the jail: %w", f.src, err)
		}
	}
	return nil
}

// sameFilesystem: the sockets Firecracker makes in the jail are
// hard-linked to SocketDir, which only works on one filesystem.
func sameFilesystem(a, b string) error {
	var sa, sb unix.Stat_t
	if err := unix.Stat(a, &sa); err != nil {
		return fmt.Errorf("stat %s: %w", a, err)
	}
	if err := unix.Stat(b, &sb); err != nil {
		return fmt.Errorf("stat %s: %w", b, err)
	}
	if sa.Dev != sb.Dev {
		return fmt.Errorf("the jailer's chroot base %s and the socket dir %s are on different filesystems; put advanced.server.firecracker.chrootBaseDir (ATELIER_JAILER_CHROOT_DIR) next to them", a, b)
	}
	return nil
}

// exposeInJail puts f.src at f.dst inside root.
func exposeInJail(root string, f jailFile, uid int) error {
	dst := filepath.Join(root, f.dst)
	// A symlink (a kernel path pointing at a versioned file, say) would be
	// linked as itself and lead outside the jail: use what it points at.
	src, err := filepath.EvalSymlinks(f.src)
	if err != nil {
		return err
	}
	f.src = src
	var st unix.Stat_t
	if err := unix.Stat(f.src, &st); err != nil {
		return err
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFBLK:
		// A node of its own: the host's stays root's.
		if err := unix.Mknod(dst, unix.S_IFBLK|0o600, int(st.Rdev)); err != nil {
			return fmt.Errorf("mknod: %w", err)
		}
		return os.Lchown(dst, uid, uid)
	case unix.S_IFREG:
	default:
		return errors.New("neither a regular file nor a block device")
	}
	if f.writable {
		if err := os.Chown(f.src, uid, uid); err != nil {
			return err
		}
	} else if st.Mode&0o004 == 0 {
		// Not readable by the jailed user: a private copy it owns.
		return copyInto(f.src, dst, uid)
	}
	err = os.Link(f.src, dst)
	if err == nil || !errors.Is(err, unix.EXDEV) {
		return err
	}
	if !f.writable {
		return copyInto(f.src, dst, uid)
	}
	// Across filesystems, a bind mount over an empty file: removeJail
	// unmounts it.
	if err := os.WriteFile(dst, nil, 0o600); err != nil {
		return err
	}
	if err := unix.Mount(f.src, dst, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind mount: %w", err)
	}
	return nil
}

func copyInto(src, dst string, uid int) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o400)
	if err != nil {
		return err
	}
	_, cerr := io.Copy(out, in)
	if err := errors.Join(cerr, out.Chown(uid, uid), out.Close()); err != nil {
		return err
	}
	return nil
}

// openInJail opens rel beneath a jail's root with flags, never following
// a symlink or leaving the jail's filesystem: the jailed user owns the
// jail and may have planted anything there.
func openInJail(root, rel string, flags int) (int, error) {
	rfd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("open jail %s: %w", root, err)
	}
	defer unix.Close(rfd)
	fd, err := unix.Openat2(rfd, strings.TrimPrefix(rel, "/"), &unix.OpenHow{
		Flags:   uint64(flags | unix.O_NOFOLLOW | unix.O_CLOEXEC),
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_NO_XDEV,
	})
	if errors.Is(err, unix.ENOENT) {
		return -1, errNotYet
	}
	if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.EXDEV) {
		return -1, fmt.Errorf("jail path %s is a symlink or leaves the jail: refused", rel)
	}
	if err != nil {
		return -1, fmt.Errorf("open %s in jail: %w", rel, err)
	}
	return fd, nil
}

// adoptSocket hard-links the socket Firecracker made at rel in id's jail to
// dst (a seed path in SocketDir), after checking that it is a socket of the
// jailed user. errNotYet when it does not exist yet.
func (d *Driver) adoptSocket(id, rel string, uid int, dst string) error {
	fd, err := openInJail(d.chrootDir(id), rel, unix.O_PATH)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT == unix.S_IFLNK {
		return fmt.Errorf("jail path %s is a symlink: refused", rel)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFSOCK || int(st.Uid) != uid {
		return fmt.Errorf("jail path %s is not a socket of uid %d: refused", rel, uid)
	}
	tmp := dst + ".tmp"
	if err := removeFile(tmp); err != nil {
		return err
	}
	if err := unix.Linkat(fd, "", unix.AT_FDCWD, tmp, unix.AT_EMPTY_PATH); err != nil {
		return fmt.Errorf("link %s out of the jail: %w", rel, err)
	}
	if err := os.Rename(tmp, dst); err != nil {
		_ = os.Remove(tmp)
		return err
	}
	return nil
}

// takeFromJail copies a regular file Firecracker wrote in the jail to dst
// (created, mode 0644), so that nothing the jailed user keeps open can
// change the copy afterwards. A reflink where the filesystem has them.
func (d *Driver) takeFromJail(id, rel, dst string) error {
	fd, err := openInJail(d.chrootDir(id), rel, unix.O_RDONLY)
	if errors.Is(err, errNotYet) {
		return fmt.Errorf("%s is missing from the jail", rel)
	}
	if err != nil {
		return err
	}
	in := os.NewFile(uintptr(fd), rel)
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return err
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("jail path %s is not a regular file: refused", rel)
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if unix.IoctlFileClone(int(out.Fd()), fd) != nil {
		if _, err := io.Copy(out, in); err != nil {
			out.Close()
			return err
		}
	}
	return errors.Join(out.Sync(), out.Close())
}

// removeJail removes what the jail of id left on the host: bind mounts in
// it, its cgroups and its directory, in the jails of every exec name (the
// binary may have been renamed since). Absent is success.
func (d *Driver) removeJail(id string) error {
	if d.opts.ChrootBase == "" || !ids.ValidSandboxID(id) {
		return nil
	}
	dirs, err := filepath.Glob(filepath.Join(d.opts.ChrootBase, "*", id))
	if err != nil {
		return err
	}
	var errs []error
	for _, dir := range dirs {
		if err := unmountUnder(dir); err != nil {
			errs = append(errs, err)
		}
	}
	if err := removeCgroups(d.opts.CgroupParent, id); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	for _, dir := range dirs {
		if err := os.RemoveAll(dir); err != nil {
			errs = append(errs, fmt.Errorf("remove jail: %w", err))
		}
	}
	return errors.Join(errs...)
}

// jails lists the ids that have a jail directory.
func (d *Driver) jails() []string {
	if d.opts.ChrootBase == "" {
		return nil
	}
	matches, _ := filepath.Glob(filepath.Join(d.opts.ChrootBase, "*", "*"))
	var out []string
	for _, m := range matches {
		if id := filepath.Base(m); ids.ValidSandboxID(id) {
			out = append(out, id)
		}
	}
	return out
}

// unmountUnder detaches every mount below dir, deepest first.
func unmountUnder(dir string) error {
	points, err := mountPoints()
	if err != nil {
		return err
	}
	var under []string
	for _, p := range points {
		if strings.HasPrefix(p, dir+"/") {
			under = append(under, p)
		}
	}
	sort.Sort(sort.Reverse(sort.StringSlice(under)))
	var errs []error
	for _, p := range under {
		if err := unix.Unmount(p, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", p, err))
		}
	}
	return errors.Join(errs...)
}

// mountPoints reads this process's mount points from /proc/self/mountinfo.
func mountPoints() ([]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		if fields := strings.Fields(sc.Text()); len(fields) > 4 {
			out = append(out, unescapeMount(fields[4]))
		}
	}
	return out, sc.Err()
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// cgroupDirs are the cgroups the jailer may have made for id: <mount of
// each hierarchy>/<parent>/<id>.
func cgroupDirs(parent, id string) ([]string, error) {
	f, err := os.Open("/proc/self/mounts")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 2 && (fields[2] == "cgroup" || fields[2] == "cgroup2") {
			out = append(out, filepath.Join(unescapeMount(fields[1]), parent, id))
		}
	}
	return out, sc.Err()
}

// removeCgroups removes id's cgroups, waiting briefly for a process that
// was just killed to leave them.
func removeCgroups(parent, id string) error {
	if parent == "" {
		return nil
	}
	dirs, err := cgroupDirs(parent, id)
	if err != nil {
		return err
	}
	var errs []error
	for _, dir := range dirs {
		deadline := time.Now().Add(cgroupRemoveWait)
		for {
			err := unix.Rmdir(dir)
			if err == nil || errors.Is(err, unix.ENOENT) {
				break
			}
			if !errors.Is(err, unix.EBUSY) || time.Now().After(deadline) {
				errs = append(errs, fmt.Errorf("remove cgroup %s: %w", dir, err))
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return errors.Join(errs...)
}
