package setup

import (
	"atelier/internal/testenv"
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vishvananda/netns"

	"atelier/internal/config"
	"atelier/internal/hostcheck"
	"atelier/internal/hostcmd/hostcmdtest"
	"atelier/internal/ids"
	"atelier/internal/network"
	"atelier/internal/systemd"
)

// testHost is a network namespace with an uplink (a veth into a second
// namespace carrying the default route), where init's network step builds
// the bridge and firewall. Both namespaces go at cleanup.
func testHost(t *testing.T) (netns.NsHandle, string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("requires root: creates network namespaces, a bridge and nftables tables")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("ip (iproute2) not found")
	}
	prefix := "atlt-" + ids.New(6) + "-"
	host, wan := prefix+"host", prefix+"wan"
	ip := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	for _, ns := range []string{host, wan} {
		ip("netns", "add", ns)
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
		ip("-n", ns, "link", "set", "lo", "up")
	}
	ip("-n", host, "link", "add", "wan0", "type", "veth", "peer", "name", "wan1", "netns", wan)
	ip("-n", host, "addr", "add", "198.51.100.1/24", "dev", "wan0")
	ip("-n", wan, "addr", "add", "198.51.100.2/24", "dev", "wan1")
	ip("-n", host, "link", "set", "wan0", "up")
	ip("-n", wan, "link", "set", "wan1", "up")
	ip("-n", host, "route", "add", "default", "via", "198.51.100.2")
	h, err := netns.GetFromPath("/run/netns/" + host)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h, prefix
}

func freePort(t *testing.T) int { return testenv.FreePort(t) }

// TestInitTwice runs `atelier init --yes` in a throwaway root: the package
// installs, user creation, its own subcommands and systemd are checked as
// exact argv (and their effects simulated under the root), the network is
// set up for real in a test namespace, the storage for real under the root.
// The second run must change nothing, and every step says so.
func TestInitTwice(t *testing.T) {
	hostNS, prefix := testHost(t)
	root := t.TempDir()
	self := filepath.Join(t.TempDir(), "atelier")
	if err := os.WriteFile(self, []byte("#!/bin/sh\n# atelier stand-in\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(root, "var/lib/dpkg"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(root, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "etc/passwd"), []byte("root:x:0:0:root:/root:/bin/bash\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfgPath := filepath.Join(root, "etc/atelier/sandbox.config.json")
	netOpts := func(o *network.Options) {
		o.HostNS = hostNS
		o.NetnsPrefix = prefix + "g-"
	}
	t.Cleanup(func() {
		cfg, err := config.Load(config.Options{File: cfgPath, Env: []string{}})
		if err != nil {
			return
		}
		opts, err := network.OptionsFromConfig(cfg, network.LinkVeth)
		if err != nil {
			t.Error(err)
			return
		}
		netOpts(&opts)
		m, err := network.New(opts)
		if err != nil {
			t.Error(err)
			return
		}
		defer m.Close()
		if err := m.Teardown(context.Background()); err != nil {
			t.Errorf("teardown: %v", err)
		}
	})

	answers := Answers{
		BaseDomain: "example.test", TLSEmail: "ops@example.test",
		GitHubClientID: "Iv1.test", GitHubClientSecret: "secret", AllowedUsers: []string{"alice"},
		StorageMethod: "file",
		Set: []string{"server.host=127.0.0.1",
			fmt.Sprintf("server.port=%d", freePort(t)), fmt.Sprintf("domain.httpPort=%d", freePort(t)),
			fmt.Sprintf("domain.httpsPort=%d", freePort(t)), fmt.Sprintf("domain.ssh.port=%d", freePort(t))},
	}
	health := 0
	opts := func(r *hostcmdtest.Runner, out *bytes.Buffer) Options {
		return Options{
			Root: root, Self: self, Runner: r, Out: out, Answers: answers, Env: []string{},
			Host: hostcheck.Host{
				KVM:        filepath.Join(root, "dev/kvm"),
				DMControl:  filepath.Join(root, "dev/mapper/control"),
				LookupHost: func(context.Context, string) ([]string, error) { return []string{"203.0.113.5"}, nil },
				LocalAddrs: func() ([]netip.Addr, error) { return []netip.Addr{netip.MustParseAddr("203.0.113.5")}, nil },
			},
			Network:  netOpts,
			LookPath: func(string) (string, error) { return "", errors.New("not found") },
			Health: func(context.Context, *config.Config) error {
				health++
				return nil
			},
			Log: slog.New(slog.NewTextHandler(out, &slog.HandlerOptions{Level: slog.LevelWarn})),
		}
	}

	cfgArg := []string{"--config", cfgPath}
	dpkg := filepath.Join(root, "var/lib/dpkg/status")
	pkgs := []string{"ca-certificates", "iproute2", "nftables", "e2fsprogs", "util-linux", "xfsprogs", "runc", "nodejs", "npm"}
	useradd := func(name, comment string) hostcmdtest.Step {
		return hostcmdtest.Cmd("/usr/sbin/useradd", "--prefix", root, "--system", "--user-group", "--no-create-home",
			"--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", "--comment", comment, "--", name).
			Then(func() {
				appendFile(t, filepath.Join(root, "etc/passwd"), name+":x:999:999::/nonexistent:/usr/sbin/nologin\n")
			})
	}
	units := systemd.AllUnits
	r1 := hostcmdtest.New(t,
		hostcmdtest.Cmd("/usr/bin/apt-get", "update"),
		hostcmdtest.Cmd(append([]string{"/usr/bin/apt-get", "install", "-y", "--no-install-recommends"}, pkgs...)...).Then(func() {
			for _, p := range pkgs {
				appendFile(t, dpkg, "Package: "+p+"\nStatus: install ok installed\n\n")
			}
		}),
		useradd("atelier-registry", "Atelier npm cache (Verdaccio)"),
		hostcmdtest.Cmd(append([]string{self, "registry", "install"}, cfgArg...)...).Then(func() {
			p := filepath.Join(root, "var/lib/atelier-registry/app/node_modules/verdaccio/package.json")
			mkfile(t, p, `{"version": "6.8.0"}`)
		}),
		hostcmdtest.Cmd(append([]string{self, "images", "build", "dev-base"}, cfgArg...)...).Then(func() {
			mkfile(t, filepath.Join(root, "var/lib/sandbox/images/dev-base.ext4"), "ext4")
		}),
		hostcmdtest.Cmd("/usr/bin/systemctl", "daemon-reload"),
		hostcmdtest.Cmd(append([]string{"/usr/bin/systemctl", "is-enabled"}, units...)...).Returns("disabled\ndisabled\ndisabled\n").Exits(1),
		hostcmdtest.Cmd(append([]string{"/usr/bin/systemctl", "enable", "--quiet"}, units...)...),
		hostcmdtest.Cmd("/usr/bin/systemctl", "is-active", "atelier-manager.service").Returns("inactive\n").Exits(3),
		hostcmdtest.Cmd("/usr/bin/systemctl", "start", "atelier-manager.service"),
		hostcmdtest.Cmd(self, "debug-vm", "start"),
	)
	var out1 bytes.Buffer
	res, err := Run(context.Background(), opts(r1, &out1))
	t.Logf("first run:\n%s", out1.String())
	if err != nil {
		t.Fatal(err)
	}
	if !res.Changed || health != 1 {
		t.Fatalf("first run: changed %v, health checks %d", res.Changed, health)
	}

	// What the first run left under the root.
	fi, err := os.Stat(cfgPath)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("config file: %v %v", fi, err)
	}
	var file struct {
		Server  struct{ Mode string }
		Auth    struct{ JWTSecret string }
		Sandbox struct{ Runtime string }
	}
	b, _ := os.ReadFile(cfgPath)
	if err := json.Unmarshal(b, &file); err != nil {
		t.Fatal(err)
	}
	if sec, err := hex.DecodeString(file.Auth.JWTSecret); err != nil || len(sec) != 32 || file.Server.Mode != "production" || file.Sandbox.Runtime != "container" {
		t.Fatalf("config: %s", b)
	}
	for _, p := range []string{"usr/local/bin/atelier", "etc/systemd/system/atelier-manager.service", "var/lib/sandbox/overlays", "var/log/sandbox"} {
		if _, err := os.Stat(filepath.Join(root, p)); err != nil {
			t.Errorf("init left no %s: %v", p, err)
		}
	}
	if fi, err := os.Stat(filepath.Join(root, "var/lib/atelier")); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("data dir: %v %v", fi, err)
	}
	if fi, err := os.Stat(filepath.Join(root, "var/log")); err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("/var/log made %v (%v): only the log dir itself is 0750", fi.Mode(), err)
	}
	for _, want := range []string{"runtime container (no usable KVM", "https://sandbox.example.test", "/auth/callback"} {
		if !strings.Contains(out1.String(), want) {
			t.Errorf("first run's output lacks %q", want)
		}
	}

	r2 := hostcmdtest.New(t,
		hostcmdtest.Cmd(append([]string{"/usr/bin/systemctl", "is-enabled"}, units...)...).Returns("enabled\nenabled\nenabled\n"),
		hostcmdtest.Cmd("/usr/bin/systemctl", "is-active", "atelier-manager.service").Returns("active\n"),
	)
	var out2 bytes.Buffer
	before := snapshot(t, root)
	res, err = Run(context.Background(), opts(r2, &out2))
	t.Logf("second run:\n%s", out2.String())
	if err != nil {
		t.Fatal(err)
	}
	if res.Changed {
		t.Fatal("second run changed something")
	}
	for _, line := range strings.Split(out2.String(), "\n") {
		if strings.HasPrefix(line, "✓") && !strings.Contains(line, "already done") &&
			!strings.HasPrefix(line, "✓ host checks") && !strings.HasPrefix(line, "✓ guest kernel") {
			t.Errorf("second run did something: %s", line)
		}
	}
	if after := snapshot(t, root); after != before {
		t.Errorf("the second run changed files under the root:\nbefore %s\nafter  %s", before, after)
	}
}

// TestInitRefusesWithoutAnswers: --yes without the GitHub app or anyone
// allowed in stops before anything changes, naming the keys.
func TestInitRefusesWithoutAnswers(t *testing.T) {
	root := t.TempDir()
	r := hostcmdtest.New(t)
	var out bytes.Buffer
	_, err := Run(context.Background(), Options{Root: root, Self: "/bin/true", Runner: r, Out: &out, Env: []string{},
		Answers: Answers{BaseDomain: "example.test", StorageMethod: "file"},
		Host:    hostcheck.Host{KVM: filepath.Join(root, "kvm")}})
	if err == nil || !strings.Contains(err.Error(), "auth.github.clientId") || !strings.Contains(err.Error(), "ATELIER_GITHUB_CLIENT_ID") {
		t.Fatalf("err = %v", err)
	}
	if _, err := os.Stat(filepath.Join(root, "etc/atelier/sandbox.config.json")); err == nil {
		t.Fatal("an invalid config was written")
	}
}

func TestDpkgStatus(t *testing.T) {
	p := filepath.Join(t.TempDir(), "status")
	mkfile(t, p, "Package: a\nStatus: install ok installed\nVersion: 1\n\nPackage: b\nStatus: deinstall ok config-files\n\nPackage: c\nVersion: 2\nStatus: install ok installed\n")
	got, err := dpkgInstalled(p)
	if err != nil || !got["a"] || got["b"] || !got["c"] {
		t.Fatalf("%v %v", got, err)
	}
}

func appendFile(t *testing.T, p, s string) {
	f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(s); err != nil {
		t.Fatal(err)
	}
}

func mkfile(t *testing.T, p, s string) {
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

// snapshot lists every path under root with its mode, size and, for
// files, mtime (a directory's mtime moves when the storage status probes
// reflink with a temporary file).
func snapshot(t *testing.T, root string) string {
	var b strings.Builder
	err := filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		mtime := fi.ModTime().UnixNano()
		if fi.IsDir() {
			mtime = 0
		}
		fmt.Fprintf(&b, "%s %v %d %d\n", strings.TrimPrefix(p, root), fi.Mode(), fi.Size(), mtime)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// TestJailerRangeMustBeFree: jailed Firecrackers run as bare uids from
// jailerUidBase; an account inside that range would own an escapee's files.
func TestJailerRangeMustBeFree(t *testing.T) {
	passwd := filepath.Join(t.TempDir(), "passwd")
	mkfile(t, passwd, "root:x:0:0::/root:/bin/sh\ndev:x:1000:1000::/home/dev:/bin/sh\nsvc:x:900007:900007::/:/usr/sbin/nologin\n")
	tests := []struct {
		lo, hi int
		want   string
	}{
		{900000, 965536, "svc"},
		{900008, 965536, ""},
		{1000, 1001, "dev"},
		{2000, 3000, ""},
	}
	for _, tt := range tests {
		name, _, ok, err := userInRange(passwd, tt.lo, tt.hi)
		if err != nil {
			t.Fatal(err)
		}
		if ok != (tt.want != "") || name != tt.want {
			t.Fatalf("[%d,%d): %q %v, want %q", tt.lo, tt.hi, name, ok, tt.want)
		}
	}
}

func TestKubernetes(t *testing.T) {
	dir := t.TempDir()
	var out strings.Builder
	a := Answers{BaseDomain: "example.org", GitHubClientSecret: "s3cret-value", AllowedOrg: "acme",
		Set: []string{"sandbox.kubernetes.images=dev-base=registry.example/atelier/dev-base:1", "sandbox.kubernetes.runtimeClassName=kata-fc"}}
	if err := Kubernetes(dir, a, &out); err != nil {
		t.Fatal(err)
	}
	env, err := os.ReadFile(filepath.Join(dir, "atelier.env"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"ATELIER_SANDBOX_RUNTIME=kubernetes", "ATELIER_BASE_DOMAIN=example.org",
		"ATELIER_K8S_IMAGES=dev-base=registry.example/atelier/dev-base:1", "ATELIER_K8S_RUNTIME_CLASS=kata-fc"} {
		if !strings.Contains(string(env), want+"\n") {
			t.Errorf("atelier.env lacks %s:\n%s", want, env)
		}
	}
	if strings.Contains(string(env), "s3cret") {
		t.Error("a secret in the config map's file")
	}
	sec, _ := os.ReadFile(filepath.Join(dir, "secrets.env"))
	if !strings.Contains(string(sec), "ATELIER_GITHUB_CLIENT_SECRET=s3cret-value\n") || !strings.Contains(string(sec), "ATELIER_JWT_SECRET=") {
		t.Errorf("secrets.env %q", sec)
	}
	if !strings.Contains(out.String(), "kubectl apply -k "+dir) {
		t.Errorf("output %q", out.String())
	}
	if err := Kubernetes(dir, Answers{Set: []string{"no.such.key=1"}}, io.Discard); err == nil || !strings.Contains(err.Error(), "no.such.key") {
		t.Errorf("unknown key: %v", err)
	}
}
