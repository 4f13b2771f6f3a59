package container

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// sysBlock is where the kernel lists block devices; a variable for tests.
var sysBlock = "/sys/block"

// LoopsBacking returns the loop devices (/dev/loopN) whose backing file is
// path. The kernel reports backing files with symlinks resolved, so path is
// resolved the same way; a deleted backing file still matches.
func LoopsBacking(path string) ([]string, error) {
	want, err := canonical(path)
	if err != nil {
		return nil, err
	}
	loops, err := boundLoops()
	if err != nil {
		return nil, err
	}
	var out []string
	for dev, backing := range loops {
		if backing == want {
			out = append(out, dev)
		}
	}
	return sortedStrings(out), nil
}

// boundLoops maps every bound loop device to its backing file.
func boundLoops() (map[string]string, error) {
	files, err := filepath.Glob(filepath.Join(sysBlock, "loop*", "loop", "backing_file"))
	if err != nil {
		return nil, fmt.Errorf("list loop devices: %w", err)
	}
	out := map[string]string{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			// Detached between the glob and the read.
			continue
		}
		name := filepath.Base(filepath.Dir(filepath.Dir(f)))
		out["/dev/"+name] = strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), " (deleted)")
	}
	return out, nil
}

// canonical makes path absolute and resolves the symlinks of its longest
// existing prefix: the kernel reports mount points and backing files that
// way, and string comparisons with them must match.
func canonical(path string) (string, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", fmt.Errorf("resolve %s: %w", path, err)
	}
	rest := ""
	for p := abs; ; p = filepath.Dir(p) {
		if r, err := filepath.EvalSymlinks(p); err == nil {
			return filepath.Join(r, rest), nil
		}
		if p == filepath.Dir(p) {
			return abs, nil
		}
		rest = filepath.Join(filepath.Base(p), rest)
	}
}

// detachLoop unbinds a loop device; one that is already unbound (or gone)
// is success. A device still mounted somewhere is only marked autoclear by
// the kernel and goes away with its last user.
func detachLoop(ctx context.Context, dev string) error {
	return detachLoopOf(ctx, dev, "")
}

// detachLoopOf unbinds dev only while its backing file is still want (when
// want is set). An autoclear device freed by our unmount can be bound again
// at once by another sandbox's boot: that device is no longer ours, and
// clearing it would pull another sandbox's disk.
func detachLoopOf(ctx context.Context, dev, want string) error {
	f, err := os.OpenFile(dev, os.O_RDONLY|unix.O_CLOEXEC, 0)
	if errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ENXIO) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("open %s: %w", dev, err)
	}
	if want != "" {
		b, rerr := os.ReadFile(filepath.Join(sysBlock, filepath.Base(dev), "loop", "backing_file"))
		if rerr != nil || strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), " (deleted)") != want {
			f.Close()
			return nil // unbound, or bound again to someone else's file
		}
	}
	err = unix.IoctlSetInt(int(f.Fd()), unix.LOOP_CLR_FD, 0)
	f.Close()
	if err != nil && !errors.Is(err, unix.ENXIO) {
		return fmt.Errorf("detach %s: %w", dev, err)
	}
	// The release of the last opener finishes the detach; wait for it so
	// that callers (and leak checks) see the device free.
	backingFile := filepath.Join(sysBlock, filepath.Base(dev), "loop", "backing_file")
	for i := 0; i < 100; i++ {
		if _, err := os.Stat(backingFile); errors.Is(err, os.ErrNotExist) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("detach %s: %w", dev, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
	if ms, err := readMounts(); err == nil {
		for _, m := range ms {
			if m.Source == dev {
				return fmt.Errorf("detach %s: still mounted at %s", dev, m.Point)
			}
		}
	}
	// Typically a process that copied the host's mounts into its own mount
	// namespace (unshare -m, ip netns exec) while the volume was mounted:
	// the filesystem lives on there, and autoclear frees the device when
	// that namespace goes away.
	return fmt.Errorf("detach %s: still in use, probably by another mount namespace; it detaches itself once that ends", dev)
}

// mountEntry is one line of /proc/self/mountinfo.
type mountEntry struct {
	Point, FSType, Source string
}

var mountinfoPath = "/proc/self/mountinfo"

func readMounts() ([]mountEntry, error) {
	f, err := os.Open(mountinfoPath)
	if err != nil {
		return nil, fmt.Errorf("read mounts: %w", err)
	}
	defer f.Close()
	return parseMountinfo(f)
}

// parseMountinfo reads lines of the form
// "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw".
func parseMountinfo(f io.Reader) ([]mountEntry, error) {
	var out []mountEntry
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		sep := -1
		for i, s := range fields {
			if s == "-" && i >= 6 {
				sep = i
				break
			}
		}
		if len(fields) < 5 || sep < 0 || len(fields) < sep+3 {
			continue
		}
		out = append(out, mountEntry{
			Point:  unescapeMount(fields[4]),
			FSType: fields[sep+1],
			Source: unescapeMount(fields[sep+2]),
		})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read mounts: %w", err)
	}
	return out, nil
}

// unescapeMount undoes the kernel's octal escapes (\040 for a space ...).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// mountsAt returns the mounts stacked on point, topmost last.
func mountsAt(point string) ([]mountEntry, error) {
	all, err := readMounts()
	if err != nil {
		return nil, err
	}
	var out []mountEntry
	for _, m := range all {
		if m.Point == point {
			out = append(out, m)
		}
	}
	return out, nil
}

// unmountAll unmounts everything stacked on point and returns the source
// devices it found there. A busy filesystem is retried for a while, then
// detached lazily: a stopped sandbox must not keep its rootfs mounted.
func unmountAll(ctx context.Context, point string) (sources []string, lazy bool, err error) {
	// Bounded: a mount that umount keeps calling "not a mount point" would
	// otherwise loop forever.
	for range 16 {
		ms, err := mountsAt(point)
		if err != nil {
			return sources, lazy, err
		}
		if len(ms) == 0 {
			return sources, lazy, nil
		}
		sources = append(sources, ms[len(ms)-1].Source)
		err = unix.Unmount(point, 0)
		if errors.Is(err, unix.EBUSY) {
			err = retryUnmount(ctx, point)
			if errors.Is(err, unix.EBUSY) {
				lazy = true
				err = unix.Unmount(point, unix.MNT_DETACH)
			}
		}
		if err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			return sources, lazy, fmt.Errorf("unmount %s: %w", point, err)
		}
	}
	return sources, lazy, fmt.Errorf("unmount %s: still mounted", point)
}

func retryUnmount(ctx context.Context, point string) error {
	var err error
	for i := 0; i < 20; i++ {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(25 * time.Millisecond):
		}
		if err = unix.Unmount(point, 0); !errors.Is(err, unix.EBUSY) {
			return err
		}
	}
	return err
}
