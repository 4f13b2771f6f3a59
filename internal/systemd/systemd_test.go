package systemd

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"atelier/internal/hostcmd"
	"atelier/internal/hostcmd/hostcmdtest"
	"atelier/internal/testenv"
)

// TestUnitsVerify runs systemd's own checker over the rendered units. It
// works without systemd as PID 1 (it loads the units in a test manager),
// but it checks that ExecStart's binary exists, so the units are rendered
// with a real executable. It exits 0 on unknown keys and bad values, which
// it only prints, so any output at all fails the test.
func TestUnitsVerify(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		testenv.Missing(t, "systemd-analyze not found (Debian package systemd)")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "atelier")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "sandbox.config.json")
	if err := os.WriteFile(cfg, []byte("{}"), 0o600); err != nil {
		t.Fatal(err)
	}
	units, err := Render(Params{Binary: bin, ConfigFile: cfg})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Install(dir, units); err != nil {
		t.Fatal(err)
	}
	args := []string{"verify", "--man=no"}
	for _, u := range units {
		args = append(args, Path(dir, u.Name))
	}
	out, err := exec.Command(analyze, args...).CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}

	// The checker does catch what the test relies on it to catch.
	bad := strings.Replace(string(units[0].Content), "KillMode=process", "KillMode=processes", 1)
	if err := os.WriteFile(Path(dir, units[0].Name), []byte(bad), 0o644); err != nil {
		t.Fatal(err)
	}
	out, _ = exec.Command(analyze, args...).CombinedOutput()
	if !strings.Contains(string(out), "kill mode") {
		t.Fatalf("systemd-analyze verify did not report a bad KillMode: %s", out)
	}
}

func TestUnitsContent(t *testing.T) {
	units, err := Render(Params{Binary: "/usr/local/bin/atelier", ConfigFile: "/etc/atelier/sandbox.config.json"})
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]string{}
	for _, u := range units {
		byName[u.Name] = string(u.Content)
	}
	m := byName[ManagerUnit]
	for _, want := range []string{
		"ExecStart=/usr/local/bin/atelier serve --log-format json",
		"Environment=ATELIER_CONFIG=/etc/atelier/sandbox.config.json",
		"After=network-online.target atelier-network.service atelier-storage.service",
		"KillMode=process", "Restart=on-failure",
	} {
		if !strings.Contains(m, want+"\n") {
			t.Errorf("manager unit lacks %q:\n%s", want, m)
		}
	}
	// A mount namespace would hide /run/netns and the sandboxes' mounts from
	// the host and from the next manager: sandboxes would not survive a restart.
	for _, opt := range []string{"ProtectSystem", "PrivateTmp", "ProtectHome", "PrivateDevices", "ReadWritePaths", "ProtectKernelTunables", "NoNewPrivileges=yes"} {
		if strings.Contains(m, "\n"+opt) {
			t.Errorf("manager unit sets %s", opt)
		}
	}
	if n := byName[NetworkUnit]; !strings.Contains(n, "ExecStart=/usr/local/bin/atelier network setup\n") || !strings.Contains(n, "Before=atelier-manager.service\n") {
		t.Errorf("network unit:\n%s", n)
	}
	if s := byName[StorageUnit]; !strings.Contains(s, "ExecStart=/usr/local/bin/atelier storage setup\n") {
		t.Errorf("storage unit:\n%s", s)
	}
}

func TestRenderRefusesUnsafePaths(t *testing.T) {
	for _, p := range []string{"atelier", "/opt/my atelier", "/opt/%n", "/opt/$HOME", `/opt/a"b`, ""} {
		if _, err := Render(Params{Binary: p, ConfigFile: "/etc/atelier/sandbox.config.json"}); err == nil {
			t.Errorf("binary %q accepted", p)
		}
		if _, err := Render(Params{Binary: "/usr/local/bin/atelier", ConfigFile: p}); err == nil {
			t.Errorf("config %q accepted", p)
		}
	}
}

func TestInstallIdempotent(t *testing.T) {
	root := t.TempDir()
	units, err := Render(Params{Binary: "/usr/local/bin/atelier", ConfigFile: "/etc/atelier/sandbox.config.json"})
	if err != nil {
		t.Fatal(err)
	}
	changed, err := Install(root, units)
	if err != nil || len(changed) != 3 {
		t.Fatalf("first install: %v %v", changed, err)
	}
	fi, err := os.Stat(Path(root, ManagerUnit))
	if err != nil || fi.Mode().Perm() != 0o644 {
		t.Fatalf("unit mode: %v %v", fi, err)
	}
	changed, err = Install(root, units)
	if err != nil || len(changed) != 0 {
		t.Fatalf("second install changed %v (%v)", changed, err)
	}
	if got := Installed(root); len(got) != 3 {
		t.Fatalf("installed %v", got)
	}
	removed, err := Remove(root, AllUnits)
	if err != nil || len(removed) != 3 {
		t.Fatalf("remove: %v %v", removed, err)
	}
	if removed, err := Remove(root, AllUnits); err != nil || len(removed) != 0 {
		t.Fatalf("second remove: %v %v", removed, err)
	}
}

func TestSystemctlArgv(t *testing.T) {
	ctx := context.Background()
	r := hostcmdtest.New(t,
		hostcmdtest.Cmd("/usr/bin/systemctl", "daemon-reload"),
		hostcmdtest.Cmd("/usr/bin/systemctl", "enable", "--quiet", ManagerUnit, NetworkUnit),
		hostcmdtest.Cmd("/usr/bin/systemctl", "restart", ManagerUnit),
		hostcmdtest.Cmd("/usr/bin/systemctl", "is-active", ManagerUnit).Returns("inactive\n").Exits(3),
		hostcmdtest.Cmd("/usr/bin/systemctl", "is-active", ManagerUnit).Returns("active\n"),
		hostcmdtest.Cmd("/usr/bin/systemctl", "is-active", ManagerUnit).Exits(1),
		hostcmdtest.Cmd("/usr/bin/systemctl", "stop", ManagerUnit).Returns("Failed to stop").Exits(5),
	)
	s := Systemctl{R: r}
	if err := s.DaemonReload(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.Enable(ctx, ManagerUnit, NetworkUnit); err != nil {
		t.Fatal(err)
	}
	if err := s.Restart(ctx, ManagerUnit); err != nil {
		t.Fatal(err)
	}
	if st, err := s.IsActive(ctx, ManagerUnit); err != nil || st != "inactive" {
		t.Fatalf("is-active = %q, %v", st, err)
	}
	if st, err := s.IsActive(ctx, ManagerUnit); err != nil || st != "active" {
		t.Fatalf("is-active = %q, %v", st, err)
	}
	if _, err := s.IsActive(ctx, ManagerUnit); err == nil {
		t.Fatal("is-active without an answer is not an error")
	}
	err := s.Stop(ctx, ManagerUnit)
	var ee *hostcmd.ExitError
	if !errors.As(err, &ee) || ee.Code != 5 || !strings.Contains(err.Error(), "Failed to stop") {
		t.Fatalf("stop error = %v", err)
	}
	if got := strings.Join(JournalArgv(ManagerUnit, 50, true), " "); got != "/usr/bin/journalctl --unit atelier-manager.service --no-pager --lines 50 --follow" {
		t.Fatalf("journal argv %q", got)
	}
}
