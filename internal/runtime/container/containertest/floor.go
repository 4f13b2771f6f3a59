// Package containertest holds what benchmarks of the container runtime
// share: the "floor", a bare runc container with no volume, network or
// agent, which is the least any container sandbox can cost on a host.
package containertest

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// Floor runs a busybox bundle on a plain directory with runc.
type Floor struct {
	Runc, Root, Bundle, Name, dir string
}

// NewFloor writes the bundle under dir; cgroup is the cgroups path to use.
func NewFloor(runc, root, dir, cgroup string) (*Floor, error) {
	f := &Floor{Runc: runc, Root: root, Bundle: filepath.Join(dir, "floor"), Name: "floor-" + filepath.Base(dir), dir: dir}
	rootfs := filepath.Join(f.Bundle, "rootfs")
	for _, d := range []string{"bin", "proc", "dev", "sys"} {
		if err := os.MkdirAll(filepath.Join(rootfs, d), 0o755); err != nil {
			return nil, err
		}
	}
	if err := copyFile("/bin/busybox", filepath.Join(rootfs, "bin", "busybox")); err != nil {
		return nil, fmt.Errorf("floor bundle needs busybox-static: %w", err)
	}
	spec := &specs.Spec{
		Version:  specs.Version,
		Root:     &specs.Root{Path: "rootfs"},
		Hostname: "floor",
		Process:  &specs.Process{Args: []string{"/bin/busybox", "sleep", "600"}, Env: []string{"PATH=/bin"}, Cwd: "/"},
		Mounts: []specs.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc"},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "mode=755"}},
		},
		Linux: &specs.Linux{
			Namespaces: []specs.LinuxNamespace{
				{Type: specs.PIDNamespace}, {Type: specs.MountNamespace}, {Type: specs.IPCNamespace},
				{Type: specs.UTSNamespace}, {Type: specs.NetworkNamespace},
			},
			CgroupsPath: cgroup + "/floor",
		},
	}
	b, err := json.Marshal(spec)
	if err != nil {
		return nil, err
	}
	return f, os.WriteFile(filepath.Join(f.Bundle, "config.json"), b, 0o600)
}

// Run times one detached start of the bundle, then removes the container.
func (f *Floor) Run() (time.Duration, error) {
	// A file, not a pipe: the detached container inherits runc's stdio,
	// and a pipe would stay open until it exits.
	logPath := filepath.Join(f.dir, "floor.log")
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return 0, err
	}
	defer logf.Close()
	start := time.Now()
	cmd := exec.Command(f.Runc, "--root", f.Root, "run", "--detach", "--bundle", f.Bundle, f.Name)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Run(); err != nil {
		out, _ := os.ReadFile(logPath)
		return 0, fmt.Errorf("floor runc run: %v\n%s", err, out)
	}
	d := time.Since(start)
	return d, f.Delete()
}

// Delete removes the floor container if it exists.
func (f *Floor) Delete() error {
	out, err := exec.Command(f.Runc, "--root", f.Root, "delete", "--force", f.Name).CombinedOutput()
	if err != nil {
		return fmt.Errorf("runc delete %s: %v: %s", f.Name, err, out)
	}
	return nil
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// ProbePackage is the command a test copies into a guest to see what the
// kernel lets it do (see probe/main.go).
const ProbePackage = "atelier/internal/runtime/container/containertest/probe"

// BuildProbe builds the probe, static, as dir/probe and returns its path.
// It runs the go command, so it works from inside the module only.
func BuildProbe(dir string) (string, error) {
	out := filepath.Join(dir, "probe")
	cmd := exec.Command("go", "build", "-ldflags", "-s -w", "-o", out, ProbePackage)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build probe: %w\n%s", err, b)
	}
	return out, nil
}
