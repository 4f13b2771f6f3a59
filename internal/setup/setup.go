// Package setup is `atelier init`: from a bare Debian server to a running
// Atelier, as a list of idempotent steps. Each step first looks at what is
// there and says "already done" when its output exists, so init is safe to
// rerun and a second run changes nothing. Every path init reads or writes
// is under Options.Root (a directory prefix for tests and image builds; "/"
// on a server), while the files it writes name paths as they are at run
// time. Commands (apt-get, useradd, systemctl, and its own subcommands for
// the registry, the kernel, images and debug-vm) run as argv through a
// hostcmd.Runner; the network and storage setup run in process.
package setup

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"atelier/internal/config"
	"atelier/internal/configfile"
	"atelier/internal/hostcheck"
	"atelier/internal/hostcmd"
	"atelier/internal/network"
	"atelier/internal/registry"
	"atelier/internal/storage"
	"atelier/internal/storage/pool"
	"atelier/internal/systemd"
)

// Paths a server install uses.
const (
	DefaultBinary = "/usr/local/bin/atelier"
	AptGet        = "/usr/bin/apt-get"
	UserAdd       = "/usr/sbin/useradd"
	// JailerUIDSpan is how many uids from advanced.server.firecracker.jailerUidBase
	// jailed Firecrackers use (one per host number of a guest address); they
	// need no passwd entries, only that no account already owns them.
	JailerUIDSpan = 65536
)

// Answers are the operator's choices; empty fields keep what the config
// file says (or, for a new file, the defaults).
type Answers struct {
	BaseDomain         string
	TLSEmail           string
	GitHubClientID     string
	GitHubClientSecret string
	AllowedOrg         string
	AllowedUsers       []string
	Admins             []string
	// Runtime is firecracker or container; empty: chosen from KVM.
	Runtime       string
	StorageMethod string
	LoopSizeGB    int
	StorageDevice string
	// Set holds further KEY=VALUE settings (config set's syntax).
	Set []string
}

// Options configure one run.
type Options struct {
	// Root prefixes every path init touches ("" or "/": the real root).
	Root string
	// ConfigFile is the config's run-time path (default config.DefaultFile).
	ConfigFile string
	// Binary is where the atelier binary is installed and what the units run.
	Binary string
	// Self is this binary: copied to Binary, and run for subcommands.
	Self    string
	Runner  hostcmd.Runner
	Out     io.Writer
	Answers Answers
	// Env is the environment the config is loaded with (nil: none, so
	// the shell's ATELIER_* variables do not leak into the file's checks).
	Env []string
	// Host is where the checks look.
	Host hostcheck.Host
	// Network adjusts the network setup's options (tests: their netns).
	Network func(*network.Options)
	// StorageRunner runs the storage setup's commands (default storage.Exec).
	StorageRunner storage.Runner
	// Health waits for the started manager to be healthy.
	Health func(ctx context.Context, cfg *config.Config) error
	// LookPath finds programs (node) to decide what to install.
	LookPath func(string) (string, error)
	Log      *slog.Logger
}

// Result says what the run did.
type Result struct {
	Changed bool
	Config  *config.Config
	Checks  hostcheck.Report
}

type run struct {
	o       Options
	ctx     context.Context
	cfg     *config.Config
	changed bool
	checks  hostcheck.Report
	sysd    systemd.Systemctl
}

// Run performs init.
func Run(ctx context.Context, o Options) (Result, error) {
	if o.Root == "" {
		o.Root = "/"
	}
	if o.ConfigFile == "" {
		o.ConfigFile = config.DefaultFile
	}
	if o.Binary == "" {
		o.Binary = DefaultBinary
	}
	if o.Out == nil {
		o.Out = io.Discard
	}
	if o.StorageRunner == nil {
		o.StorageRunner = storage.Exec{}
	}
	if o.Log == nil {
		o.Log = slog.New(slog.NewTextHandler(o.Out, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	if o.LookPath == nil {
		o.LookPath = func(string) (string, error) { return "", errors.New("not found") }
	}
	r := &run{o: o, ctx: ctx, sysd: systemd.Systemctl{R: o.Runner, Out: o.Out}}
	steps := []struct {
		name string
		fn   func() (string, error)
	}{
		{"config", r.config},
		{"host checks", r.hostChecks},
		{"packages", r.packages},
		{"service users", r.users},
		{"directories", r.dirs},
		{"binary", r.binary},
		{"network", r.network},
		{"storage", r.storage},
		{"npm cache (Verdaccio)", r.registry},
		{"guest kernel", r.kernel},
		{"default image", r.image},
		{"systemd units", r.units},
		{"manager", r.manager},
		{"debug-vm", r.debugVM},
	}
	for _, s := range steps {
		msg, err := s.fn()
		if err != nil {
			fmt.Fprintf(o.Out, "✗ %s: %v\n", s.name, err)
			return Result{Changed: r.changed, Config: r.cfg, Checks: r.checks}, fmt.Errorf("%s: %w", s.name, err)
		}
		fmt.Fprintf(o.Out, "✓ %s: %s\n", s.name, msg)
	}
	r.printURLs()
	return Result{Changed: r.changed, Config: r.cfg, Checks: r.checks}, nil
}

// P is a run-time path under the root.
func (r *run) p(path string) string { return filepath.Join(r.o.Root, path) }

func (r *run) did(format string, a ...any) (string, error) {
	r.changed = true
	return fmt.Sprintf(format, a...), nil
}

func done(format string, a ...any) (string, error) {
	return "already done: " + fmt.Sprintf(format, a...), nil
}

// --- config ---

// config writes /etc/atelier/sandbox.config.json: a new file holds only
// what differs from the defaults (the mode, the operator's answers, a
// generated JWT secret), so later defaults still reach it; an existing one
// gets the answers given and keeps everything else.
func (r *run) config() (string, error) {
	path := r.p(r.o.ConfigFile)
	a := r.o.Answers
	var changes []configfile.Change
	add := func(key string, v any) { changes = append(changes, configfile.Change{Key: key, Value: v}) }
	_, err := os.Stat(path)
	fresh := errors.Is(err, fs.ErrNotExist)
	if err != nil && !fresh {
		return "", err
	}
	if fresh {
		secret := make([]byte, 32)
		if _, err := rand.Read(secret); err != nil {
			return "", err
		}
		add("server.mode", string(config.ModeProduction))
		add("auth.jwtSecret", hex.EncodeToString(secret))
	}
	if a.BaseDomain != "" {
		add("domain.baseDomain", a.BaseDomain)
	}
	if a.TLSEmail != "" {
		add("domain.tls.email", a.TLSEmail)
	}
	if a.GitHubClientID != "" {
		add("auth.github.clientId", a.GitHubClientID)
	}
	if a.GitHubClientSecret != "" {
		add("auth.github.clientSecret", a.GitHubClientSecret)
	}
	if a.AllowedOrg != "" {
		add("auth.allowedOrg", a.AllowedOrg)
	}
	if a.AllowedUsers != nil {
		add("auth.allowedUsers", a.AllowedUsers)
	}
	if a.Admins != nil {
		add("auth.admins", a.Admins)
	}
	if a.StorageMethod != "" {
		add("setup.storage.method", a.StorageMethod)
	}
	if a.LoopSizeGB != 0 {
		add("setup.storage.loopSizeGb", a.LoopSizeGB)
	}
	if a.StorageDevice != "" {
		add("setup.storage.device", a.StorageDevice)
	}
	for _, kv := range a.Set {
		k, raw, ok := strings.Cut(kv, "=")
		if !ok {
			return "", fmt.Errorf("--set %q: expected KEY=VALUE", kv)
		}
		v, err := configfile.ParseValue(k, raw)
		if err != nil {
			return "", fmt.Errorf("--set: %w", err)
		}
		add(k, v)
	}
	// The runtime is settled by the host checks, which need the config;
	// check it with the runtime the checks will pick.
	rt := a.Runtime
	if rt == "" && fresh {
		rt, _ = hostcheck.PickRuntime(r.host())
	}
	if rt != "" {
		add("sandbox.runtime", rt)
	}
	if fresh && a.StorageMethod == "" && !slices.ContainsFunc(a.Set, func(s string) bool { return strings.HasPrefix(s, "setup.storage.method=") }) {
		add("setup.storage.method", "loop")
		if a.LoopSizeGB == 0 {
			add("setup.storage.loopSizeGb", 100)
		}
	}
	changed, err := configfile.Apply(path, r.o.Env, changes...)
	if err != nil {
		return "", err
	}
	cfg, err := config.Load(config.Options{File: path, Env: r.o.Env})
	if err != nil {
		return "", err
	}
	r.cfg = cfg
	switch {
	case fresh:
		return r.did("wrote %s (mode 0600; a new random auth.jwtSecret)", r.o.ConfigFile)
	case changed:
		return r.did("updated %s", r.o.ConfigFile)
	}
	return done("%s is valid", r.o.ConfigFile)
}

// runtimeReason says why the runtime is what it is.
func (r *run) runtimeReason() string {
	if r.o.Answers.Runtime != "" {
		return "chosen with --runtime"
	}
	h := r.o.Host
	h.Runtime = ""
	if rt, why := hostcheck.PickRuntime(h); rt == r.cfg.Sandbox.Runtime {
		return why
	}
	return "set in " + r.o.ConfigFile
}

func (r *run) host() hostcheck.Host {
	h := r.o.Host
	if r.o.Answers.Runtime != "" {
		h.Runtime = r.o.Answers.Runtime
	}
	return h
}

func (r *run) hostChecks() (string, error) {
	h := r.host()
	h.Runtime = r.cfg.Sandbox.Runtime
	rep := hostcheck.Run(r.ctx, r.cfg, h)
	r.checks = rep
	for _, c := range rep.Results {
		if c.Status == hostcheck.OK {
			continue
		}
		fmt.Fprintf(r.o.Out, "  %-5s %s: %s\n", c.Status, c.Name, c.Detail)
		if c.Fix != "" {
			fmt.Fprintf(r.o.Out, "        fix: %s\n", c.Fix)
		}
	}
	if !rep.OK() {
		var names []string
		for _, f := range rep.Failed() {
			names = append(names, f.Name)
		}
		return "", fmt.Errorf("fix %s first (see above), then run atelier init again", strings.Join(names, ", "))
	}
	return fmt.Sprintf("%d checks, none failed; runtime %s (%s)", len(rep.Results), r.cfg.Sandbox.Runtime, r.runtimeReason()), nil
}

// --- packages ---

// KernelPackages build the guest kernel (atelier images kernel).
var KernelPackages = []string{"build-essential", "bc", "bison", "flex", "libelf-dev", "libssl-dev", "xz-utils", "linux-source-6.1"}

// Packages returns the Debian packages a host needs for cfg.
func (r *run) wantedPackages() []string {
	pk := []string{"ca-certificates", "iproute2", "nftables", "e2fsprogs", "util-linux", "xfsprogs"}
	if r.cfg.Sandbox.Runtime == "container" {
		pk = append(pk, "runc")
	}
	if r.cfg.Sandbox.Runtime == "firecracker" && !exists(r.p(r.cfg.Advanced.Server.Firecracker.KernelPath)) {
		pk = append(pk, KernelPackages...)
	}
	for _, c := range r.checks.Results {
		if c.Name == "device-mapper" && c.Status == hostcheck.OK {
			pk = append(pk, "lvm2", "thin-provisioning-tools")
		}
	}
	// Verdaccio needs Node.js 20+ and npm; a node from elsewhere will do.
	if _, err := r.o.LookPath("node"); err != nil {
		pk = append(pk, "nodejs", "npm")
	}
	return pk
}

func (r *run) packages() (string, error) {
	installed, err := dpkgInstalled(r.p("/var/lib/dpkg/status"))
	if err != nil {
		return "", err
	}
	var missing []string
	for _, p := range r.wantedPackages() {
		if !installed[p] {
			missing = append(missing, p)
		}
	}
	if len(missing) == 0 {
		return done("every package is installed")
	}
	if err := r.o.Runner.Run(r.ctx, r.o.Out, AptGet, "update"); err != nil {
		return "", err
	}
	argv := append([]string{AptGet, "install", "-y", "--no-install-recommends"}, missing...)
	if err := r.o.Runner.Run(r.ctx, r.o.Out, argv...); err != nil {
		return "", err
	}
	return r.did("installed %s", strings.Join(missing, " "))
}

// dpkgInstalled reads dpkg's status file: the packages whose status is
// "install ok installed".
func dpkgInstalled(path string) (map[string]bool, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return map[string]bool{}, nil
	}
	if err != nil {
		return nil, err
	}
	out := map[string]bool{}
	for _, para := range strings.Split(string(b), "\n\n") {
		var name, status string
		for _, line := range strings.Split(para, "\n") {
			if v, ok := strings.CutPrefix(line, "Package: "); ok {
				name = strings.TrimSpace(v)
			}
			if v, ok := strings.CutPrefix(line, "Status: "); ok {
				status = strings.TrimSpace(v)
			}
		}
		if name != "" && status == "install ok installed" {
			out[name] = true
		}
	}
	return out, nil
}

// --- users ---

func (r *run) users() (string, error) {
	want := []struct{ name, comment string }{
		{r.cfg.Advanced.Server.Verdaccio.User, "Atelier npm cache (Verdaccio)"},
	}
	// Jailed Firecrackers run as bare uids from jailerUidBase, one per
	// sandbox: an account already holding one of them would share its files
	// with a guest that escapes its VMM.
	base := r.cfg.Advanced.Server.Firecracker.JailerUIDBase
	if name, uid, ok, err := userInRange(r.p("/etc/passwd"), base, base+JailerUIDSpan); err != nil {
		return "", err
	} else if ok {
		return "", fmt.Errorf("user %s has uid %d, inside the uids jailed Firecrackers use (%d to %d): set advanced.server.firecracker.jailerUidBase (ATELIER_JAILER_UID_BASE) to a free range",
			name, uid, base, base+JailerUIDSpan-1)
	}
	var made []string
	for _, u := range want {
		ok, err := userExists(r.p("/etc/passwd"), u.name)
		if err != nil {
			return "", err
		}
		if ok {
			continue
		}
		argv := []string{UserAdd}
		if r.o.Root != "/" {
			argv = append(argv, "--prefix", r.o.Root)
		}
		argv = append(argv, "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
			"--shell", "/usr/sbin/nologin", "--comment", u.comment, "--", u.name)
		if err := r.o.Runner.Run(r.ctx, r.o.Out, argv...); err != nil {
			return "", err
		}
		made = append(made, u.name)
	}
	if len(made) == 0 {
		return done("%s exists; jailer uids %d+ are free", want[0].name, base)
	}
	return r.did("created system users %s", strings.Join(made, ", "))
}

// userInRange finds an account whose uid lies in [lo, hi).
func userInRange(passwd string, lo, hi int) (string, int, bool, error) {
	b, err := os.ReadFile(passwd)
	if errors.Is(err, fs.ErrNotExist) {
		return "", 0, false, nil
	}
	if err != nil {
		return "", 0, false, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Split(line, ":")
		if len(f) < 3 {
			continue
		}
		if uid, err := strconv.Atoi(f[2]); err == nil && uid >= lo && uid < hi {
			return f[0], uid, true, nil
		}
	}
	return "", 0, false, nil
}

func userExists(passwd, name string) (bool, error) {
	b, err := os.ReadFile(passwd)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if n, _, ok := strings.Cut(line, ":"); ok && n == name {
			return true, nil
		}
	}
	return false, nil
}

// --- directories ---

func (r *run) dirs() (string, error) {
	want := []struct {
		path string
		mode os.FileMode
	}{
		{r.cfg.Server.DataDir, 0o700},
		{r.cfg.Sandbox.StateDir, 0o755},
		{r.cfg.Sandbox.LogDir, 0o750},
	}
	var made []string
	for _, d := range want {
		p := r.p(d.path)
		fi, err := os.Stat(p)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			// Parents get the usual 0755; only the directory itself is private.
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				return "", err
			}
			if err := os.Mkdir(p, d.mode); err != nil {
				return "", err
			}
			if err := os.Chmod(p, d.mode); err != nil {
				return "", err
			}
			made = append(made, fmt.Sprintf("%s (%04o)", d.path, d.mode))
		case err != nil:
			return "", err
		case !fi.IsDir():
			return "", fmt.Errorf("%s is not a directory", d.path)
		case fi.Mode().Perm() != d.mode && d.mode == 0o700:
			if err := os.Chmod(p, d.mode); err != nil {
				return "", err
			}
			made = append(made, fmt.Sprintf("%s (now %04o)", d.path, d.mode))
		}
	}
	if len(made) == 0 {
		return done("data, state and log directories exist")
	}
	return r.did("created %s", strings.Join(made, ", "))
}

// --- binary ---

func (r *run) binary() (string, error) {
	if r.o.Self == "" {
		return "", errors.New("no path of this binary to install")
	}
	dst := r.p(r.o.Binary)
	if same, err := sameFile(r.o.Self, dst); err != nil {
		return "", err
	} else if same {
		return done("%s is this binary", r.o.Binary)
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return "", err
	}
	b, err := os.ReadFile(r.o.Self)
	if err != nil {
		return "", err
	}
	if err := configfile.WriteAtomic(dst, b, 0o755); err != nil {
		return "", fmt.Errorf("install %s: %w", r.o.Binary, err)
	}
	return r.did("installed %s", r.o.Binary)
}

func sameFile(a, b string) (bool, error) {
	ha, err := fileSHA256(a)
	if err != nil {
		return false, err
	}
	hb, err := fileSHA256(b)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	return err == nil && ha == hb, err
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

// --- network and storage ---

func (r *run) network() (string, error) {
	kind := network.LinkTAP
	if r.cfg.Sandbox.Runtime == "container" {
		kind = network.LinkVeth
	}
	opts, err := network.OptionsFromConfig(r.cfg, kind)
	if err != nil {
		return "", err
	}
	opts.Log = r.o.Log
	if r.o.Network != nil {
		r.o.Network(&opts)
	}
	m, err := network.New(opts)
	if err != nil {
		return "", err
	}
	defer m.Close()
	st, err := m.Status(r.ctx)
	if err != nil {
		return "", err
	}
	if st.BridgePresent && st.BridgeUp && len(st.Tables) == 2 && st.BridgeForwarding && st.EgressForwarding {
		return done("bridge %s and the firewall are in place", st.Bridge)
	}
	if err := m.Setup(r.ctx); err != nil {
		return "", err
	}
	return r.did("bridge %s, NAT and the firewall set up", opts.Bridge)
}

// rooted is the config with its directories under the root, for the
// steps that run in process.
func (r *run) rooted() *config.Config {
	c := *r.cfg
	c.Sandbox.StateDir = r.p(c.Sandbox.StateDir)
	c.Sandbox.LogDir = r.p(c.Sandbox.LogDir)
	c.Server.DataDir = r.p(c.Server.DataDir)
	return &c
}

func (r *run) storage() (string, error) {
	cfg := r.rooted()
	rep, err := pool.Status(r.ctx, cfg, r.o.StorageRunner)
	if err == nil && rep.Ready && rep.Driver != "" && (rep.Method == cfg.Setup.Storage.Method) {
		return done("%s pool ready (%s)", rep.Driver, rep.VolumeDir)
	}
	rep, err = pool.Setup(r.ctx, cfg, r.o.StorageRunner)
	if err != nil {
		return "", err
	}
	if !rep.Changed && rep.Ready {
		return done("%s pool ready (%s)", rep.Driver, rep.VolumeDir)
	}
	return r.did("%s pool ready (%s)", rep.Driver, rep.VolumeDir)
}

// --- subcommand steps ---

func (r *run) self(args ...string) []string {
	return append([]string{r.o.Self}, args...)
}

func (r *run) configArg() []string { return []string{"--config", r.p(r.o.ConfigFile)} }

func (r *run) registry() (string, error) {
	v := r.cfg.Advanced.Server.Verdaccio
	if registry.Installed(r.p(registry.AppDir(v.Dir)), v.Version) {
		return done("Verdaccio %s in %s", v.Version, registry.AppDir(v.Dir))
	}
	if err := r.o.Runner.Run(r.ctx, r.o.Out, r.self(append([]string{"registry", "install"}, r.configArg()...)...)...); err != nil {
		return "", err
	}
	return r.did("Verdaccio %s installed", v.Version)
}

func (r *run) kernel() (string, error) {
	if r.cfg.Sandbox.Runtime != "firecracker" {
		return "not needed by the " + r.cfg.Sandbox.Runtime + " runtime", nil
	}
	k := r.cfg.Advanced.Server.Firecracker.KernelPath
	// The kernel build records what it was built from beside it.
	if exists(r.p(k)) && exists(r.p(k+".json")) {
		return done("%s", k)
	}
	if err := r.o.Runner.Run(r.ctx, r.o.Out, r.self("images", "kernel", "--output", k)...); err != nil {
		return "", err
	}
	return r.did("built %s", k)
}

// ImagePresent reports whether the default image is where the volume
// drivers look: an LVM volume image-<id> or {stateDir}/images/<id>.ext4.
func ImagePresent(root string, cfg *config.Config) (string, bool) {
	id := cfg.Sandbox.DefaultImage
	for _, p := range []string{
		filepath.Join("/dev", storage.VolumeGroup, "image-"+id),
		filepath.Join(cfg.Sandbox.StateDir, "images", id+".ext4"),
	} {
		if exists(filepath.Join(root, p)) {
			return p, true
		}
	}
	return "", false
}

func (r *run) image() (string, error) {
	id := r.cfg.Sandbox.DefaultImage
	if p, ok := ImagePresent(r.o.Root, r.cfg); ok {
		return done("image %s at %s", id, p)
	}
	if err := r.o.Runner.Run(r.ctx, r.o.Out, r.self(append([]string{"images", "build", id}, r.configArg()...)...)...); err != nil {
		return "", err
	}
	return r.did("built image %s", id)
}

// --- systemd ---

func (r *run) units() (string, error) {
	units, err := systemd.Render(systemd.Params{Binary: r.o.Binary, ConfigFile: r.o.ConfigFile})
	if err != nil {
		return "", err
	}
	changed, err := systemd.Install(r.o.Root, units)
	if err != nil {
		return "", err
	}
	if len(changed) > 0 {
		if err := r.sysd.DaemonReload(r.ctx); err != nil {
			return "", err
		}
	}
	states, _ := hostcmd.Output(r.ctx, r.o.Runner, append([]string{systemd.SystemctlBin, "is-enabled"}, systemd.AllUnits...)...)
	allEnabled := len(strings.Fields(states)) == len(systemd.AllUnits)
	for _, s := range strings.Fields(states) {
		allEnabled = allEnabled && s == "enabled"
	}
	if !allEnabled {
		if err := r.sysd.Enable(r.ctx, systemd.AllUnits...); err != nil {
			return "", err
		}
	}
	switch {
	case len(changed) == 0 && allEnabled:
		return done("%s installed and enabled", strings.Join(systemd.AllUnits, ", "))
	case len(changed) == 0:
		return r.did("enabled %s", strings.Join(systemd.AllUnits, ", "))
	}
	return r.did("installed %s and enabled them", strings.Join(changed, ", "))
}

func (r *run) manager() (string, error) {
	state, err := r.sysd.IsActive(r.ctx, systemd.ManagerUnit)
	if err != nil {
		return "", err
	}
	var msg string
	switch {
	case state == "active" && !r.changed:
		return done("%s is running", systemd.ManagerUnit)
	case state == "active":
		if err := r.sysd.Restart(r.ctx, systemd.ManagerUnit); err != nil {
			return "", err
		}
		msg = "restarted " + systemd.ManagerUnit + " to apply this run's changes (sandboxes keep running)"
	default:
		if err := r.sysd.Start(r.ctx, systemd.ManagerUnit); err != nil {
			return "", err
		}
		msg = "started " + systemd.ManagerUnit
	}
	r.changed = true
	if r.o.Health != nil {
		if err := r.o.Health(r.ctx, r.cfg); err != nil {
			return "", fmt.Errorf("%s: %w (journalctl -u %s)", msg, err, systemd.ManagerUnit)
		}
		msg += "; healthy"
	}
	return msg, nil
}

func (r *run) debugVM() (string, error) {
	if !r.changed {
		return done("nothing changed since the last run (atelier debug-vm start checks again)")
	}
	if err := r.o.Runner.Run(r.ctx, r.o.Out, r.self("debug-vm", "start")...); err != nil {
		return "", err
	}
	return "a throwaway sandbox booted, ran a command and was destroyed", nil
}

func (r *run) printURLs() {
	c := r.cfg
	w := r.o.Out
	fmt.Fprintf(w, "\nAtelier is running.\n")
	fmt.Fprintf(w, "  Dashboard:      %s\n", c.DashboardURL())
	fmt.Fprintf(w, "  OAuth callback: %s   (the GitHub OAuth app's callback URL)\n", c.OAuthCallbackURL())
	fmt.Fprintf(w, "  SSH:            ssh <sandbox-id>@%s -p %d\n", c.Domain.SSH.Hostname, c.Domain.SSH.Port)
	fmt.Fprintf(w, "  Sandbox hosts:  https://sandbox-<id>.%s, https://dev-<name>-<id>.%s\n", c.Domain.BaseDomain, c.Domain.BaseDomain)
	fmt.Fprintf(w, "  Status:         atelier doctor; atelier manager status|logs\n")
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
