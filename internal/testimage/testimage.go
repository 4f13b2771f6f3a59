// Package testimage builds the minimal guest image that Atelier's
// integration tests and `make test-image` boot: busybox-static, the guest
// agent and just enough of /etc for a root and a dev user. The image is an
// ext4 file made by `mkfs.ext4 -d` from a staged directory, so building it
// mounts nothing and needs no root.
package testimage

import (
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
)

// Label is the ext4 volume label of the test image.
const Label = "atelier-test"

// DefaultSizeMB is the image size when Build is given none: room for
// busybox, the agent and the files tests write.
const DefaultSizeMB = 64

// AgentPath is where the guest agent lives inside the image.
const AgentPath = "/sbin/atelier-agent"

// DevUID is the uid and gid of the image's unprivileged user "dev".
const DevUID = 1000

// SuPath is busybox's su, setuid root: `su -c CMD` runs CMD as root for
// any user, without a password.
const SuPath = "/bin/su"

// Applets are the busybox commands the image links into /bin. Tests and the
// agent's own checks use only these.
var Applets = []string{
	"sh", "ls", "cat", "echo", "sleep", "ip", "ping", "wget", "mkdir", "rm", "env", "id",
	"hostname", "kill", "ps", "true", "false", "touch", "httpd", "nc",
}

// busyboxPaths are where Debian's busybox-static puts the binary.
var busyboxPaths = []string{"/usr/bin/busybox", "/bin/busybox"}

// Build writes an ext4 image of sizeMB (DefaultSizeMB when 0) to out with
// agentBinary installed as AgentPath. Both binaries must be statically
// linked: the image has no libc. out is replaced atomically.
func Build(ctx context.Context, out, agentBinary string, sizeMB int) error {
	if sizeMB == 0 {
		sizeMB = DefaultSizeMB
	}
	if sizeMB < 8 {
		return fmt.Errorf("build test image: size %d MB is too small (minimum 8)", sizeMB)
	}
	busybox, err := findBusybox()
	if err != nil {
		return fmt.Errorf("build test image: %w", err)
	}
	for _, bin := range []string{busybox, agentBinary} {
		if err := checkStatic(bin); err != nil {
			return fmt.Errorf("build test image: %w", err)
		}
	}
	if out == "" {
		return errors.New("build test image: empty output path")
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return fmt.Errorf("build test image: create output dir: %w", err)
	}
	stage, err := os.MkdirTemp(filepath.Dir(out), ".testimage-stage-")
	if err != nil {
		return fmt.Errorf("build test image: create staging dir: %w", err)
	}
	defer os.RemoveAll(stage)
	owners, err := stageTree(stage, busybox, agentBinary)
	if err != nil {
		return fmt.Errorf("build test image: stage: %w", err)
	}
	tmp := out + ".tmp"
	os.Remove(tmp)
	defer os.Remove(tmp)
	// -E root_owner: the image's / belongs to root whoever builds it; the
	// rest gets its owners from debugfs below, because mkfs -d copies the
	// builder's uid, which is wrong when the builder is not root.
	mkfs := []string{"-q", "-F", "-t", "ext4", "-d", stage, "-L", Label, "-E", "root_owner=0:0",
		tmp, fmt.Sprintf("%dM", sizeMB)}
	if err := run(ctx, "mkfs.ext4", mkfs...); err != nil {
		return fmt.Errorf("build test image: %w", err)
	}
	paths, err := treePaths(stage)
	if err != nil {
		return fmt.Errorf("build test image: list staged files: %w", err)
	}
	if err := setOwners(ctx, tmp, paths, owners); err != nil {
		return fmt.Errorf("build test image: %w", err)
	}
	if err := os.Rename(tmp, out); err != nil {
		return fmt.Errorf("build test image: %w", err)
	}
	return nil
}

func findBusybox() (string, error) {
	for _, p := range busyboxPaths {
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
			return p, nil
		}
	}
	if p, err := exec.LookPath("busybox"); err == nil {
		return p, nil
	}
	return "", errors.New("busybox not found (install the busybox-static package)")
}

// checkStatic refuses dynamically linked binaries: the image has no loader,
// and a dynamic binary there fails with a confusing "no such file".
func checkStatic(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("open %s as ELF: %w", path, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked; the image needs a static binary (busybox-static, CGO_ENABLED=0)", path)
		}
	}
	return nil
}

type owner struct{ uid, gid int }

// stageTree lays the image out under dir and returns the owner of every
// path (relative, with a leading slash) that is not root's.
func stageTree(dir, busybox, agent string) (map[string]owner, error) {
	dirs := []struct {
		path string
		mode os.FileMode
	}{
		{"bin", 0o755}, {"sbin", 0o755}, {"usr", 0o755}, {"usr/bin", 0o755}, {"usr/sbin", 0o755},
		{"etc", 0o755}, {"root", 0o700}, {"home", 0o755}, {"home/dev", 0o755},
		{"tmp", os.ModeSticky | 0o777}, {"var", 0o755}, {"var/tmp", os.ModeSticky | 0o777}, {"var/log", 0o755},
		{"run", 0o755}, {"proc", 0o555}, {"sys", 0o555}, {"dev", 0o755},
	}
	for _, d := range dirs {
		p := filepath.Join(dir, d.path)
		if err := os.Mkdir(p, d.mode); err != nil {
			return nil, err
		}
		// Mkdir is subject to the umask; sticky bits need an explicit chmod.
		if err := os.Chmod(p, d.mode); err != nil {
			return nil, err
		}
	}
	if err := copyFile(busybox, filepath.Join(dir, "bin/busybox"), 0o755); err != nil {
		return nil, err
	}
	if err := copyFile(agent, filepath.Join(dir, strings.TrimPrefix(AgentPath, "/")), 0o755); err != nil {
		return nil, err
	}
	// su, setuid root, and root without a password stand in for the
	// dev-base image's passwordless sudo: the image's user can become
	// root, which tests need to show that sandbox root is not host root.
	// A copy, not a link: only this file carries the setuid bit, and
	// busybox drops it for every applet but su.
	if err := copyFile(busybox, filepath.Join(dir, strings.TrimPrefix(SuPath, "/")), os.ModeSetuid|0o755); err != nil {
		return nil, err
	}
	for _, a := range Applets {
		if err := os.Symlink("busybox", filepath.Join(dir, "bin", a)); err != nil {
			return nil, err
		}
	}
	files := []struct {
		path, body string
		mode       os.FileMode
	}{
		{"etc/passwd", "root:x:0:0:root:/root:/bin/sh\ndev:x:1000:1000:dev:/home/dev:/bin/sh\n", 0o644},
		{"etc/group", "root:x:0:\ndev:x:1000:\n", 0o644},
		{"etc/shadow", "root::19000:0:99999:7:::\ndev:*:19000:0:99999:7:::\n", 0o600},
		{"etc/hostname", "sandbox\n", 0o644},
		{"etc/hosts", "127.0.0.1\tlocalhost\n::1\tlocalhost\n", 0o644},
		// The runtime replaces this with the sandbox's DNS servers.
		{"etc/resolv.conf", "# written by the Atelier runtime at boot\n", 0o644},
		{"etc/os-release", "NAME=\"Atelier test image\"\nID=atelier-test\n", 0o644},
	}
	for _, f := range files {
		if err := os.WriteFile(filepath.Join(dir, f.path), []byte(f.body), f.mode); err != nil {
			return nil, err
		}
		if err := os.Chmod(filepath.Join(dir, f.path), f.mode); err != nil {
			return nil, err
		}
	}
	return map[string]owner{"/home/dev": {DevUID, DevUID}}, nil
}

func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copy %s: %w", src, err)
	}
	if err := out.Close(); err != nil {
		return err
	}
	return os.Chmod(dst, mode)
}

// setOwners gives every inode of the image root's ownership, except the
// paths in special, by editing the image with debugfs (no mount needed).
// paths are the image's paths, taken from the staging tree.
func setOwners(ctx context.Context, image string, paths []string, special map[string]owner) error {
	var script bytes.Buffer
	for _, p := range paths {
		o := special[p]
		fmt.Fprintf(&script, "set_inode_field %s uid %d\nset_inode_field %s gid %d\n", p, o.uid, p, o.gid)
	}
	cmd := exec.CommandContext(ctx, "debugfs", "-w", "-f", "-", image)
	cmd.Stdin = &script
	var stderr bytes.Buffer
	cmd.Stdout = io.Discard
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("set owners with debugfs: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	// debugfs reports a failed command on stderr but still exits 0; its
	// only other stderr line is the version banner.
	for _, line := range strings.Split(strings.TrimSpace(stderr.String()), "\n") {
		if line != "" && !strings.HasPrefix(line, "debugfs ") {
			return fmt.Errorf("set owners with debugfs: %s", strings.TrimSpace(stderr.String()))
		}
	}
	return nil
}

// treePaths lists every path under dir as an absolute path of the image.
func treePaths(dir string) ([]string, error) {
	var out []string
	err := filepath.WalkDir(dir, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == dir {
			return nil
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		out = append(out, "/"+filepath.ToSlash(rel))
		return nil
	})
	sort.Strings(out)
	return out, err
}

func run(ctx context.Context, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s: %w: %s", name, err, strings.TrimSpace(out.String()))
	}
	return nil
}
