package container

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// UserNSMode says whether guests run in a user namespace.
type UserNSMode string

const (
	// UserNSAuto uses a user namespace where the host supports one and
	// warns loudly where it does not.
	UserNSAuto UserNSMode = "auto"
	// UserNSOn requires it: New fails on a host without support.
	UserNSOn UserNSMode = "on"
	// UserNSOff runs the guest's root as the host's root.
	UserNSOff UserNSMode = "off"
)

// The host ids of a sandbox: container ids 0..idRangeSize-1 map to
// idRangeBase + (slot-1)*idRangeSize onwards, where the slot is the offset
// of the sandbox's leased address in the bridge subnet (1 for the first
// host address). A lease belongs to one sandbox at a time (the store
// allocates it in one transaction), so no two running sandboxes share a
// host id, and the range is derived again from the lease after a manager
// restart: nothing to persist. Nor does a range need to outlive a boot:
// the root filesystem is an idmapped mount, so the volume stores the ids
// the guest sees, whatever range the sandbox runs with next.
//
// 0x70000000 starts the block systemd leaves unused (its container range
// ends below it, and uids from 0x80000000 trip software that treats uid_t
// as signed); slots stop before 0x7FFE0000, systemd's "foreign" range.
// Nothing a host normally allocates (login users, system users,
// /etc/subuid ranges from 100000) reaches this block.
const (
	idRangeBase = 0x70000000
	idRangeSize = 1 << 16
	// maxSlot is the last slot whose range ends below 0x7FFE0000: every
	// host of a /20 bridge (1..4094) has one.
	maxSlot = (0x7FFE0000 - idRangeBase) / idRangeSize
)

// idRange is a sandbox's mapping of container ids 0..Size-1 onto host ids.
type idRange struct {
	HostID uint32
	Size   uint32
}

// hostIDRange derives the sandbox's host id range from its lease.
func hostIDRange(ip string, prefixLen int) (idRange, error) {
	a, err := netip.ParseAddr(ip)
	if err != nil || !a.Is4() {
		return idRange{}, fmt.Errorf("user namespace: the id range comes from the sandbox's IPv4 lease, got %q", ip)
	}
	if prefixLen < 1 || prefixLen > 30 {
		return idRange{}, fmt.Errorf("user namespace: prefix length %d of the lease %s is not a guest subnet", prefixLen, ip)
	}
	b := a.As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	slot := v & (1<<(32-prefixLen) - 1)
	if slot < 1 || slot > maxSlot {
		return idRange{}, fmt.Errorf("user namespace: lease %s is host %d of its /%d subnet; only hosts 1..%d get an id range (use network.bridgePrefix 20 or longer)",
			ip, slot, prefixLen, maxSlot)
	}
	return idRange{HostID: idRangeBase + (slot-1)*idRangeSize, Size: idRangeSize}, nil
}

// userNS is a user namespace with a sandbox's mapping, held open by fd
// for as long as an idmapped mount is being made with it.
type userNS struct{ fd int }

func (u userNS) Close() error { return unix.Close(u.fd) }

// newUserNS makes a user namespace mapping container ids 0..r.Size-1 onto
// r. A namespace is made by a process: util-linux's unshare, which makes
// one and runs cat, which waits on a pipe. Once the process is in its new
// namespace, the manager (root outside) writes the mapping and opens the
// namespace file; the open file keeps the namespace after the process is
// gone, and an idmapped mount made with it keeps it after that.
//
// A process exec'd from the manager costs about a millisecond whatever the
// manager's size: Go starts it with vfork. Cloning the manager itself into
// a new user namespace, the obvious alternative, copies its page tables:
// 3 ms at 64 MiB of heap, 40 ms and more at 256 MiB (measured here).
func newUserNS(tools usernsTools, r idRange) (userNS, error) {
	mine, err := os.Readlink("/proc/self/ns/user")
	if err != nil {
		return userNS{}, fmt.Errorf("create user namespace: %w", err)
	}
	stdin, hold, err := os.Pipe()
	if err != nil {
		return userNS{}, fmt.Errorf("create user namespace: %w", err)
	}
	defer hold.Close()
	cmd := exec.Command(tools.unshare, "--user", "--", tools.cat)
	cmd.Stdin = stdin
	// Dies with the manager should it die right here.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	err = cmd.Start()
	stdin.Close()
	if err != nil {
		return userNS{}, fmt.Errorf("create user namespace: start %s: %w", tools.unshare, err)
	}
	defer func() {
		cmd.Process.Kill()
		cmd.Wait()
	}()
	proc := "/proc/" + strconv.Itoa(cmd.Process.Pid)
	// unshare(CLONE_NEWUSER) comes right after the exec; give a loaded
	// host a generous while.
	deadline := time.Now().Add(5 * time.Second)
	for delay := 20 * time.Microsecond; ; delay = min(2*delay, time.Millisecond) {
		ns, err := os.Readlink(proc + "/ns/user")
		if err != nil {
			return userNS{}, fmt.Errorf("create user namespace: %s exited: %w", tools.unshare, err)
		}
		if ns != mine {
			break
		}
		if time.Now().After(deadline) {
			return userNS{}, fmt.Errorf("create user namespace: %s made none within 5s", tools.unshare)
		}
		time.Sleep(delay)
	}
	mapping := fmt.Sprintf("0 %d %d\n", r.HostID, r.Size)
	for _, f := range []string{"uid_map", "gid_map"} {
		if err := os.WriteFile(proc+"/"+f, []byte(mapping), 0); err != nil {
			return userNS{}, fmt.Errorf("create user namespace: write %s: %w", f, err)
		}
	}
	fd, err := unix.Open(proc+"/ns/user", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return userNS{}, fmt.Errorf("create user namespace: open it: %w", err)
	}
	return userNS{fd: fd}, nil
}

// usernsTools are the host programs newUserNS runs.
type usernsTools struct{ unshare, cat string }

func findUsernsTools() (usernsTools, error) {
	var t usernsTools
	var err error
	if t.unshare, err = exec.LookPath("unshare"); err != nil {
		return t, fmt.Errorf("find unshare (util-linux): %w", err)
	}
	if t.cat, err = exec.LookPath("cat"); err != nil {
		return t, fmt.Errorf("find cat: %w", err)
	}
	return t, nil
}

// mountIDMapped mounts the ext4 filesystem on dev at target through ns's
// mapping: a file stored with uid 1000 appears to the guest as 1000 and to
// the host as the sandbox's host id for 1000, and the guest's writes are
// stored with the ids it sees. The mount is made detached (fsopen,
// fsmount), mapped, then moved into place, so target never shows an
// unmapped filesystem. nodev: device nodes on a volume the guest controls
// mean nothing.
func mountIDMapped(dev, target string, ns userNS) error {
	fsfd, err := unix.Fsopen("ext4", unix.FSOPEN_CLOEXEC)
	if err != nil {
		return fmt.Errorf("fsopen ext4: %w", err)
	}
	defer unix.Close(fsfd)
	if err := unix.FsconfigSetString(fsfd, "source", dev); err != nil {
		return fmt.Errorf("fsconfig source %s: %w", dev, err)
	}
	if err := unix.FsconfigCreate(fsfd); err != nil {
		return fmt.Errorf("mount ext4 from %s: %w", dev, err)
	}
	mfd, err := unix.Fsmount(fsfd, unix.FSMOUNT_CLOEXEC, unix.MOUNT_ATTR_NODEV)
	if err != nil {
		return fmt.Errorf("fsmount %s: %w", dev, err)
	}
	defer unix.Close(mfd)
	attr := unix.MountAttr{Attr_set: unix.MOUNT_ATTR_IDMAP, Userns_fd: uint64(ns.fd)}
	if err := unix.MountSetattr(mfd, "", unix.AT_EMPTY_PATH, &attr); err != nil {
		return fmt.Errorf("idmap the mount of %s: %w", dev, err)
	}
	if err := unix.MoveMount(mfd, "", unix.AT_FDCWD, target, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fmt.Errorf("move the mount of %s to %s: %w", dev, target, err)
	}
	return nil
}

// probeUserNS is probeHostUserNS; tests replace it to play a host
// without support.
var probeUserNS = probeHostUserNS

// probeHostUserNS checks that this host can give guests a user namespace with
// an idmapped root filesystem: user namespaces enabled, a namespace made
// and mapped, and mount_setattr present. Idmapped mounts arrived with
// mount_setattr (Linux 5.12) and ext4 supported them from the start, so
// the syscall's presence is the test for the volume's filesystem.
func probeHostUserNS() (usernsTools, error) {
	b, err := os.ReadFile("/proc/sys/user/max_user_namespaces")
	if err != nil {
		return usernsTools{}, fmt.Errorf("read max_user_namespaces: %w", err)
	}
	if n, err := strconv.Atoi(strings.TrimSpace(string(b))); err != nil || n < 1 {
		return usernsTools{}, fmt.Errorf("user namespaces are disabled (user.max_user_namespaces = %s)", strings.TrimSpace(string(b)))
	}
	tools, err := findUsernsTools()
	if err != nil {
		return usernsTools{}, err
	}
	// A throwaway namespace: its mapping gives nobody anything.
	ns, err := newUserNS(tools, idRange{HostID: idRangeBase, Size: 1})
	if err != nil {
		return usernsTools{}, err
	}
	ns.Close()
	// An invalid descriptor: EBADF once the kernel has the syscall. (An
	// empty change succeeds before the descriptor is looked at.)
	err = unix.MountSetattr(-1, "", unix.AT_EMPTY_PATH, &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY})
	if errors.Is(err, unix.EBADF) {
		return tools, nil
	}
	if errors.Is(err, unix.ENOSYS) {
		return usernsTools{}, errors.New("the kernel has no idmapped mounts (mount_setattr, Linux 5.12)")
	}
	if err == nil {
		return usernsTools{}, errors.New("mount_setattr accepted an invalid descriptor")
	}
	return usernsTools{}, fmt.Errorf("mount_setattr: %w", err)
}

// searchableByOthers checks that every existing directory from / to dir
// lets others search it: inside a user namespace, host root's directories
// are others', and runc resolves the bundle's paths from there.
func searchableByOthers(dir string) error {
	for p := dir; ; p = filepath.Dir(p) {
		fi, err := os.Stat(p)
		if err == nil && fi.Mode().Perm()&0o001 == 0 {
			return fmt.Errorf("%s is mode %04o: the guest's root, an unprivileged host user, cannot reach its bundle; chmod o+x it", p, fi.Mode().Perm())
		}
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		if p == filepath.Dir(p) {
			return nil
		}
	}
}
