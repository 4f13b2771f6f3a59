package network

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// netnsDir is where `ip netns` keeps named namespaces; the container runtime
// and operators' `ip netns exec` find Atelier's guest namespaces there.
const netnsDir = "/var/run/netns"

// nsfsMagic is NSFS_MAGIC: a namespace file bind-mounted over a plain file.
const nsfsMagic = 0x6e736673

var errNotNetns = errors.New("not a network namespace")

// Do runs fn on a dedicated OS thread switched into ns: sockets fn opens and
// processes it forks belong to ns.
func Do(ns netns.NsHandle, fn func() error) error {
	return onSwitchedThread(func() error {
		if err := netns.Set(ns); err != nil {
			return fmt.Errorf("enter netns: %w", err)
		}
		return nil
	}, fn)
}

// createNamedNetns makes a new network namespace and pins it at path the way
// `ip netns add` does (a bind mount of the namespace file). netns.NewNamed
// would leave the calling thread inside the new namespace; here a throwaway
// locked thread does the unshare and is restored (or discarded).
func createNamedNetns(path string) error {
	if err := ensureNetnsDir(filepath.Dir(path)); err != nil {
		return err
	}
	return onSwitchedThread(func() error {
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("unshare netns: %w", err)
		}
		return nil
	}, func() error { return pinCurrentNetns(path) })
}

// onSwitchedThread runs fn on a locked OS thread that enter has moved to
// another network namespace, then moves the thread back. A thread whose
// namespace cannot be restored stays locked, so Go discards it when the
// goroutine ends and no other goroutine ever runs in the wrong namespace.
func onSwitchedThread(enter, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("get current netns: %w", err)
			return
		}
		defer orig.Close()
		if err := enter(); err != nil {
			// A failed setns or unshare leaves the thread where it was.
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("restore netns: %w", err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// ensureNetnsDir makes dir a shared mount point of its own, as `ip netns add`
// and CNI do. Whichever of them finds the directory a plain one bind-mounts it
// onto itself recursively; every namespace file already mounted in it then
// gets a copy in the new layer while the original stays underneath, hidden,
// and the file can no longer be unlinked (EBUSY) once the visible copy is
// unmounted. A directory that is already a mount point is left as it is
// (only made shared), so after this no well-behaved tool re-binds it. Shared
// propagation also carries an unmount into the mount namespaces of runc and
// `ip netns exec` that copied the file, so the namespace is freed sooner.
func ensureNetnsDir(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create netns dir: %w", err)
	}
	err := unix.Mount("", dir, "none", unix.MS_SHARED|unix.MS_REC, "")
	if errors.Is(err, unix.EINVAL) { // not a mount point yet
		if err := unix.Mount(dir, dir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("bind-mount netns dir %s: %w", dir, err)
		}
		err = unix.Mount("", dir, "none", unix.MS_SHARED|unix.MS_REC, "")
	}
	if err != nil {
		return fmt.Errorf("make netns dir %s a shared mount: %w", dir, err)
	}
	return nil
}

func pinCurrentNetns(path string) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_RDONLY, 0o444)
	if err != nil {
		return fmt.Errorf("create netns file: %w", err)
	}
	f.Close()
	src := fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid())
	if err := unix.Mount(src, path, "none", unix.MS_BIND, ""); err != nil {
		os.Remove(path)
		return fmt.Errorf("bind-mount netns %s: %w", path, err)
	}
	return nil
}

// openNamedNetns opens a pinned namespace; errNotNetns means a stale file
// (nothing mounted on it), os.ErrNotExist an absent one.
func openNamedNetns(path string) (netns.NsHandle, error) {
	h, err := netns.GetFromPath(path)
	if err != nil {
		return netns.None(), fmt.Errorf("open netns %s: %w", path, err)
	}
	var st unix.Statfs_t
	if err := unix.Fstatfs(int(h), &st); err != nil {
		h.Close()
		return netns.None(), fmt.Errorf("stat netns %s: %w", path, err)
	}
	if st.Type != nsfsMagic {
		h.Close()
		return netns.None(), fmt.Errorf("open netns %s: %w", path, errNotNetns)
	}
	return h, nil
}

// ensureNamedNetns opens the namespace at path, creating it (or replacing a
// stale file left by a crash) when needed. created reports a new namespace.
func ensureNamedNetns(path string) (h netns.NsHandle, created bool, err error) {
	h, err = openNamedNetns(path)
	if err == nil {
		return h, false, nil
	}
	if errors.Is(err, errNotNetns) {
		if err := deleteNamedNetns(path); err != nil {
			return netns.None(), false, err
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return netns.None(), false, err
	}
	if err := createNamedNetns(path); err != nil {
		return netns.None(), false, err
	}
	h, err = openNamedNetns(path)
	return h, true, err
}

// deleteNamedNetns unpins a namespace; an absent one is already gone. The
// namespace itself lives on while a process (a container) still uses it.
func deleteNamedNetns(path string) error {
	// Every mount stacked on the file, not just the top one.
	for range maxStacked {
		err := unix.Unmount(path, unix.MNT_DETACH)
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
			break
		}
		if err != nil {
			return fmt.Errorf("unmount netns %s: %w", path, err)
		}
	}
	err := unix.Unlink(path)
	if errors.Is(err, unix.EBUSY) {
		// A copy of the mount is hidden under a later bind of the directory
		// (see ensureNetnsDir): unreachable by path here, so unlink from a
		// private mount namespace where it is not in the way.
		err = unlinkBeneathMounts(path)
	}
	if err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("remove netns %s: %w", path, err)
	}
	return nil
}

// maxStacked bounds the mounts peeled off one path.
const maxStacked = 64

// unlinkBeneathMounts unlinks path from a private copy of the mount
// namespace in which every bind stacked over its directory and every mount on
// the file itself are peeled off first. Once the file is not a mount point
// in the namespace of the caller of unlink, the kernel removes it and
// detaches the mounts on it in every other namespace, the hidden one in the
// host's included.
func unlinkBeneathMounts(path string) error {
	return onThrowawayThread(func() error {
		if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
			return fmt.Errorf("unshare mount namespace: %w", err)
		}
		// Private first: the unmounts below must not propagate back.
		if err := unix.Mount("", "/", "none", unix.MS_PRIVATE|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("make private mount namespace: %w", err)
		}
		dir := filepath.Dir(path)
		for range maxStacked {
			if unix.Unmount(dir, unix.MNT_DETACH) != nil {
				break
			}
		}
		for range maxStacked {
			if unix.Unmount(path, unix.MNT_DETACH) != nil {
				break
			}
		}
		return unix.Unlink(path)
	})
}

// onThrowawayThread runs fn on a locked OS thread that nothing else ever
// uses again: fn's goroutine ends still locked, so Go terminates the thread
// with whatever namespace fn moved it to. That must not be the main thread,
// which Go cannot terminate and only parks for good, with fn's namespace
// still on it, where /proc/self (the main thread's view) would show it to
// the rest of the process. Holding the main thread while a second goroutine
// runs fn keeps fn off it.
func onThrowawayThread(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if unix.Gettid() == unix.Getpid() {
			defer runtime.UnlockOSThread()
			errc <- onThrowawayThread(fn)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// namedNetns lists the names under netnsDir that start with prefix.
func namedNetns(prefix string) ([]string, error) {
	ents, err := os.ReadDir(netnsDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list netns: %w", err)
	}
	var out []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), prefix) {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

// /proc/sys/net resolves to the namespace of the thread that opens it, so
// sysctls of another namespace are read and written from a thread inside it.
func writeSysctl(ns netns.NsHandle, key, value string) error {
	return Do(ns, func() error {
		if err := os.WriteFile(filepath.Join("/proc/sys", key), []byte(value), 0o644); err != nil {
			return fmt.Errorf("write sysctl %s: %w", key, err)
		}
		return nil
	})
}

func readSysctl(ns netns.NsHandle, key string) (string, error) {
	var out string
	err := Do(ns, func() error {
		b, err := os.ReadFile(filepath.Join("/proc/sys", key))
		if err != nil {
			return fmt.Errorf("read sysctl %s: %w", key, err)
		}
		out = strings.TrimSpace(string(b))
		return nil
	})
	return out, err
}

// DoAt is Do for the namespace pinned at path (a file under /var/run/netns);
// an empty path runs fn right here, in the caller's namespace.
func DoAt(path string, fn func() error) error {
	if path == "" {
		return fn()
	}
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", path, err)
	}
	defer ns.Close()
	return Do(ns, fn)
}

// DialFunc connects like net.Dialer.DialContext.
type DialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// DialIn returns a DialFunc whose sockets are created in ns. A socket keeps
// the namespace it was made in, so only the dial runs on the switched
// thread; the connection is then used from any goroutine. Host names are
// resolved by the calling namespace's resolver: dial literal addresses.
func DialIn(ns netns.NsHandle, d *net.Dialer) DialFunc {
	return dialVia(func(fn func() error) error { return Do(ns, fn) }, d)
}

// DialAt is DialIn for the namespace pinned at path; "" dials right here.
func DialAt(path string, d *net.Dialer) DialFunc {
	return dialVia(func(fn func() error) error { return DoAt(path, fn) }, d)
}

func dialVia(run func(func() error) error, d *net.Dialer) DialFunc {
	if d == nil {
		d = &net.Dialer{}
	}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := run(func() error {
			var err error
			c, err = d.DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
}
