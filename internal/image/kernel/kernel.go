// Package kernel builds and checks the guest kernel: an uncompressed ELF
// vmlinux that Firecracker boots, built from Debian's linux-source-6.1
// package with the config fragment kept in this directory
// (atelier-x86_64-6.1.config) applied to `make allnoconfig`, or with an
// operator's own .config. Everything the boot contract needs is built in:
// no modules, no initrd.
//
// A build is cached in its output location: beside <out> it leaves
// <out>.config (the kernel's full .config) and <out>.json (the Manifest:
// source package and version, the input config's hash), and a later build
// with the same inputs returns at once.
package kernel

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"time"
)

// Fragment is Atelier's kernel config fragment.
//
//go:embed atelier-x86_64-6.1.config
var Fragment []byte

const (
	// SourcePackage is the Debian package holding the kernel source.
	SourcePackage = "linux-source-6.1"
	// SourceTarball is where SourcePackage puts the source.
	SourceTarball = "/usr/src/linux-source-6.1.tar.xz"
	// recipe changes whenever the build steps change what they produce,
	// so that older cached kernels are rebuilt.
	recipe = 1
)

// Packages are the Debian packages a build needs, for error messages.
const Packages = "build-essential bc bison flex libelf-dev libssl-dev xz-utils " + SourcePackage

// tools are the programs a build runs.
var tools = []string{"make", "gcc", "ld", "bc", "bison", "flex", "tar", "xz", "perl"}

// Options configure Build.
type Options struct {
	// Output is the vmlinux to write.
	Output string
	// Config, when set, is an operator's complete kernel .config, used
	// instead of the fragment (through `make olddefconfig`). It must still
	// have every option of Required.
	Config []byte
	// Source is the source tarball (default SourceTarball).
	Source string
	// SourceVersion identifies Source in the cache key (default: the
	// installed version of SourcePackage, else the tarball's SHA-256).
	SourceVersion string
	// WorkDir holds the unpacked source while building (default the
	// system temporary directory); about 2 GB.
	WorkDir string
	// Jobs is make's -j (default the number of CPUs).
	Jobs int
	// Force rebuilds even when the cache matches.
	Force bool
	// Log receives progress lines; BuildLog receives make's output.
	Log      *slog.Logger
	BuildLog io.Writer
}

// Manifest is <out>.json: what the kernel at <out> was built from.
type Manifest struct {
	SourcePackage string `json:"sourcePackage"`
	SourceVersion string `json:"sourceVersion"`
	// ConfigKind is "fragment" (Atelier's) or "operator" (--config).
	ConfigKind   string    `json:"configKind"`
	ConfigSHA256 string    `json:"configSha256"`
	Recipe       int       `json:"recipe"`
	Release      string    `json:"kernelRelease"`
	VmlinuxSHA   string    `json:"vmlinuxSha256"`
	BuiltAt      time.Time `json:"builtAt"`
	BuildSeconds float64   `json:"buildSeconds"`
}

// key is what must match for a cached kernel to be reused.
func (m Manifest) key() string {
	return fmt.Sprintf("%s %s %s %s %d", m.SourcePackage, m.SourceVersion, m.ConfigKind, m.ConfigSHA256, m.Recipe)
}

// Result is what Build did.
type Result struct {
	Manifest Manifest
	// Cached is true when the kernel at Output already matched.
	Cached bool
}

// ManifestPath and ConfigPath are the files recorded beside a kernel.
func ManifestPath(out string) string { return out + ".json" }

// ConfigPath is the kernel's full .config, recorded beside it.
func ConfigPath(out string) string { return out + ".config" }

// Build makes the kernel at o.Output, or finds it already built from the
// same inputs.
func Build(ctx context.Context, o Options) (Result, error) {
	if o.Output == "" || !filepath.IsAbs(o.Output) {
		return Result{}, fmt.Errorf("build kernel: output %q is not an absolute path", o.Output)
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.BuildLog == nil {
		o.BuildLog = io.Discard
	}
	if o.Source == "" {
		o.Source = SourceTarball
	}
	if o.Jobs <= 0 {
		o.Jobs = runtime.NumCPU()
	}
	if _, err := os.Stat(o.Source); err != nil {
		return Result{}, fmt.Errorf("build kernel: kernel source %s: %w (install the Debian package %s)", o.Source, err, SourcePackage)
	}
	var missing []string
	for _, t := range tools {
		if _, err := exec.LookPath(t); err != nil {
			missing = append(missing, t)
		}
	}
	if len(missing) > 0 {
		return Result{}, fmt.Errorf("build kernel: missing %s (install the Debian packages %s)", strings.Join(missing, ", "), Packages)
	}
	want := Manifest{SourcePackage: SourcePackage, SourceVersion: o.SourceVersion, ConfigKind: "fragment", Recipe: recipe}
	input := Fragment
	if o.Config != nil {
		if !bytes.Contains(o.Config, []byte("CONFIG_")) {
			return Result{}, errors.New("build kernel: the given config has no CONFIG_ lines: it is not a kernel .config")
		}
		input, want.ConfigKind = o.Config, "operator"
	}
	want.ConfigSHA256 = sha256Hex(input)
	if want.SourceVersion == "" {
		v, err := sourceVersion(ctx, o.Source)
		if err != nil {
			return Result{}, fmt.Errorf("build kernel: %w", err)
		}
		want.SourceVersion = v
	}
	if !o.Force {
		if m, ok := cached(o.Output, want); ok {
			o.Log.Info("kernel is up to date", "path", o.Output, "release", m.Release)
			return Result{Manifest: m, Cached: true}, nil
		}
	}

	start := time.Now()
	if err := os.MkdirAll(filepath.Dir(o.Output), 0o755); err != nil {
		return Result{}, fmt.Errorf("build kernel: create output dir: %w", err)
	}
	work, err := os.MkdirTemp(o.WorkDir, "atelier-kernel-")
	if err != nil {
		return Result{}, fmt.Errorf("build kernel: work dir: %w", err)
	}
	defer os.RemoveAll(work)
	o.Log.Info("unpacking kernel source", "source", o.Source, "version", want.SourceVersion)
	if err := run(ctx, o.BuildLog, work, "tar", "-xf", o.Source, "-C", work); err != nil {
		return Result{}, fmt.Errorf("build kernel: unpack source: %w", err)
	}
	src, err := sourceDir(work)
	if err != nil {
		return Result{}, fmt.Errorf("build kernel: %w", err)
	}
	mk := func(args ...string) error {
		return run(ctx, o.BuildLog, src, "make", append([]string{"-C", src}, args...)...)
	}
	if o.Config == nil {
		frag := filepath.Join(work, "atelier.fragment")
		if err := os.WriteFile(frag, Fragment, 0o644); err != nil {
			return Result{}, fmt.Errorf("build kernel: %w", err)
		}
		if err := mk("KCONFIG_ALLCONFIG="+frag, "allnoconfig"); err != nil {
			return Result{}, fmt.Errorf("build kernel: configure: %w", err)
		}
	} else {
		if err := os.WriteFile(filepath.Join(src, ".config"), o.Config, 0o644); err != nil {
			return Result{}, fmt.Errorf("build kernel: %w", err)
		}
		if err := mk("olddefconfig"); err != nil {
			return Result{}, fmt.Errorf("build kernel: configure: %w", err)
		}
	}
	config, err := os.ReadFile(filepath.Join(src, ".config"))
	if err != nil {
		return Result{}, fmt.Errorf("build kernel: read .config: %w", err)
	}
	if o.Config == nil {
		if dropped := FragmentDropped(Fragment, config); len(dropped) > 0 {
			return Result{}, fmt.Errorf("build kernel: Kconfig did not keep these fragment lines (a dependency is missing): %s", strings.Join(dropped, "; "))
		}
	}
	if miss := MissingRequired(ParseConfig(config)); len(miss) > 0 {
		return Result{}, fmt.Errorf("build kernel: the config lacks what the boot contract needs: %s", strings.Join(miss, ", "))
	}
	o.Log.Info("building vmlinux", "jobs", o.Jobs, "config", want.ConfigKind)
	if err := mk(fmt.Sprintf("-j%d", o.Jobs), "KBUILD_BUILD_USER=atelier", "KBUILD_BUILD_HOST=atelier", "vmlinux"); err != nil {
		return Result{}, fmt.Errorf("build kernel: make vmlinux: %w", err)
	}
	release, err := os.ReadFile(filepath.Join(src, "include", "config", "kernel.release"))
	if err != nil {
		return Result{}, fmt.Errorf("build kernel: read kernel release: %w", err)
	}
	want.Release = strings.TrimSpace(string(release))
	sum, err := install(filepath.Join(src, "vmlinux"), o.Output)
	if err != nil {
		return Result{}, fmt.Errorf("build kernel: %w", err)
	}
	want.VmlinuxSHA = sum
	want.BuiltAt = time.Now().UTC().Truncate(time.Second)
	want.BuildSeconds = time.Since(start).Round(time.Second).Seconds()
	if err := writeAtomic(ConfigPath(o.Output), config); err != nil {
		return Result{}, fmt.Errorf("build kernel: record config: %w", err)
	}
	mj, _ := json.MarshalIndent(want, "", "  ")
	if err := writeAtomic(ManifestPath(o.Output), append(mj, '\n')); err != nil {
		return Result{}, fmt.Errorf("build kernel: record manifest: %w", err)
	}
	o.Log.Info("kernel built", "path", o.Output, "release", want.Release, "duration", time.Since(start).Round(time.Second))
	return Result{Manifest: want}, nil
}

// cached returns the manifest of the kernel at out when it was built from
// the same inputs and is still the file that build wrote.
func cached(out string, want Manifest) (Manifest, bool) {
	b, err := os.ReadFile(ManifestPath(out))
	if err != nil {
		return Manifest{}, false
	}
	var m Manifest
	if json.Unmarshal(b, &m) != nil || m.key() != want.key() {
		return Manifest{}, false
	}
	if _, err := os.Stat(ConfigPath(out)); err != nil {
		return Manifest{}, false
	}
	sum, err := fileSHA256(out)
	if err != nil || sum != m.VmlinuxSHA {
		return Manifest{}, false
	}
	return m, true
}

// sourceVersion is the installed version of SourcePackage when the
// tarball is that package's, else the tarball's SHA-256.
func sourceVersion(ctx context.Context, tarball string) (string, error) {
	if tarball == SourceTarball {
		out, err := exec.CommandContext(ctx, "dpkg-query", "-W", "-f=${Version}", SourcePackage).Output()
		if v := strings.TrimSpace(string(out)); err == nil && v != "" {
			return v, nil
		}
	}
	sum, err := fileSHA256(tarball)
	if err != nil {
		return "", fmt.Errorf("hash kernel source: %w", err)
	}
	return "sha256:" + sum, nil
}

func sourceDir(work string) (string, error) {
	ents, err := os.ReadDir(work)
	if err != nil {
		return "", err
	}
	for _, e := range ents {
		if e.IsDir() {
			if _, err := os.Stat(filepath.Join(work, e.Name(), "Makefile")); err == nil {
				return filepath.Join(work, e.Name()), nil
			}
		}
	}
	return "", errors.New("the source tarball holds no kernel tree")
}

// FragmentDropped lists the fragment's settings that the final .config
// does not have: Kconfig silently drops an option whose dependencies are
// off, and a kernel without, say, virtio-blk builds fine and never boots.
func FragmentDropped(fragment, config []byte) []string {
	have := ParseConfig(config)
	var out []string
	for name, v := range ParseConfig(fragment) {
		got := have[name]
		if got == "" {
			got = "n" // absent from a .config means off
		}
		if got != v {
			out = append(out, fmt.Sprintf("%s=%s (got %s)", name, v, got))
		}
	}
	sort.Strings(out)
	return out
}

// ParseConfig reads a .config (or fragment): CONFIG_X=v lines, and
// "# CONFIG_X is not set" as "n".
func ParseConfig(b []byte) map[string]string {
	out := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if name, ok := strings.CutPrefix(line, "# "); ok {
			if n, ok := strings.CutSuffix(name, " is not set"); ok && strings.HasPrefix(n, "CONFIG_") {
				out[n] = "n"
			}
			continue
		}
		if name, v, ok := strings.Cut(line, "="); ok && strings.HasPrefix(name, "CONFIG_") {
			out[name] = v
		}
	}
	return out
}

func run(ctx context.Context, log io.Writer, dir, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	var tail tailBuffer
	w := io.MultiWriter(log, &tail)
	cmd.Stdout, cmd.Stderr = w, w
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, tail.String())
	}
	return nil
}

// tailBuffer keeps the last few KiB written to it, for error messages.
type tailBuffer struct{ b []byte }

const tailMax = 4 << 10

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.b = append(t.b, p...)
	if len(t.b) > tailMax {
		t.b = append(t.b[:0], t.b[len(t.b)-tailMax:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string { return strings.TrimSpace(string(t.b)) }

// install copies the built vmlinux into place atomically and returns its
// SHA-256.
func install(src, dst string) (string, error) {
	in, err := os.Open(src)
	if err != nil {
		return "", fmt.Errorf("open built vmlinux: %w", err)
	}
	defer in.Close()
	tmp := dst + ".tmp"
	out, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return "", fmt.Errorf("install vmlinux: %w", err)
	}
	h := sha256.New()
	_, cerr := io.Copy(io.MultiWriter(out, h), in)
	if err := errors.Join(cerr, out.Sync(), out.Close()); err != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("install vmlinux: %w", err)
	}
	if err := os.Rename(tmp, dst); err != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("install vmlinux: %w", err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func writeAtomic(path string, b []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
