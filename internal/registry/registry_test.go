package registry

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"atelier/internal/agent"
	"atelier/internal/guest"
	"atelier/internal/store"
)

// startAgent runs a real guest agent confined to a fresh directory.
func startAgent(t *testing.T) (string, *agent.Client) {
	t.Helper()
	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	for _, d := range []string{"etc", "root"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	srv := guest.NewServer(guest.Options{
		SandboxID: "sbx", FileRoots: []string{root}, WorkDir: root,
		LogDir: filepath.Join(dir, "logs"), ConfigPath: filepath.Join(dir, "config.json"),
	})
	sock := filepath.Join(dir, "agent.sock")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.ServeUnix(ctx, sock) }()
	c := agent.New(agent.UnixDialer(sock))
	t.Cleanup(func() {
		c.Close()
		_ = srv.Shutdown(context.Background())
		cancel()
		<-done
	})
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	defer wcancel()
	if err := c.WaitReady(wctx, 0); err != nil {
		t.Fatal(err)
	}
	return root, c
}

func TestApplyFiles(t *testing.T) {
	root, c := startAgent(t)
	ctx := context.Background()
	tg := Targets{
		SystemNpmrc: filepath.Join(root, "etc/npmrc"),
		Homes:       []Home{{Dir: filepath.Join(root, "root")}, {Dir: filepath.Join(root, "home/dev")}},
	}
	url := "http://172.16.0.1:4873/"
	files := clientFiles(tg, url, "172.16.0.1")
	read := func(rel string) (string, bool) {
		b, err := os.ReadFile(filepath.Join(root, rel))
		return string(b), err == nil
	}
	// The guest's own bunfig (a private scope, say) and a config Atelier
	// wrote earlier with another address.
	own := "[install.scopes]\nacme = \"https://npm.acme.example/\"\n"
	if err := os.WriteFile(filepath.Join(root, "root/.bunfig.toml"), []byte(own), 0o600); err != nil {
		t.Fatal(err)
	}
	stale := Marker + "\nregistry=http://172.16.0.1:9999/\n"
	if err := os.WriteFile(filepath.Join(root, "etc/npmrc"), []byte(stale), 0o644); err != nil {
		t.Fatal(err)
	}

	steps := []struct {
		name    string
		enabled bool
		want    map[string]string // "" = absent
	}{
		{"enable", true, map[string]string{
			"etc/npmrc":         Marker + "\nregistry=" + url + "\n",
			"root/.npmrc":       Marker + "\nregistry=" + url + "\n",
			"root/.yarnrc.yml":  Marker + "\nnpmRegistryServer: \"" + url + "\"\nunsafeHttpWhitelist:\n  - \"172.16.0.1\"\n",
			"root/.bunfig.toml": own,
			"home/dev/.npmrc":   "",
		}},
		{"enable again", true, map[string]string{
			"root/.npmrc":       Marker + "\nregistry=" + url + "\n",
			"root/.bunfig.toml": own,
		}},
		{"disable", false, map[string]string{
			"etc/npmrc":         "",
			"root/.npmrc":       "",
			"root/.yarnrc.yml":  "",
			"root/.bunfig.toml": own,
		}},
		{"disable again", false, map[string]string{
			"root/.npmrc":       "",
			"root/.bunfig.toml": own,
		}},
	}
	for _, st := range steps {
		if err := applyFiles(ctx, c, files, st.enabled); err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		for rel, want := range st.want {
			got, ok := read(rel)
			if want == "" && ok {
				t.Errorf("%s: %s exists:\n%s", st.name, rel, got)
			}
			if want != "" && got != want {
				t.Errorf("%s: %s = %q, want %q", st.name, rel, got, want)
			}
		}
	}
	if _, err := os.Stat(filepath.Join(root, "home")); !errors.Is(err, fs.ErrNotExist) {
		t.Error("a home missing in the image was created")
	}

	// bun's config carries the address the same way.
	if err := os.Remove(filepath.Join(root, "root/.bunfig.toml")); err != nil {
		t.Fatal(err)
	}
	if err := applyFiles(ctx, c, files, true); err != nil {
		t.Fatal(err)
	}
	if got, _ := read("root/.bunfig.toml"); got != Marker+"\n[install]\nregistry = \""+url+"\"\n" {
		t.Errorf("bunfig: %q", got)
	}
}

func newTestService(t *testing.T) (*Service, *store.Store) {
	t.Helper()
	st, err := store.Open(context.Background(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	s, err := NewService(context.Background(), ServiceOptions{Store: st})
	if err != nil {
		t.Fatal(err)
	}
	return s, st
}

func TestSettingsPersist(t *testing.T) {
	s, st := newTestService(t)
	ctx := context.Background()
	if got := s.Settings(); got.Enabled || got.EvictionDays != DefaultEvictionDays {
		t.Fatalf("defaults: %+v", got)
	}
	for _, days := range []int{0, -1, 366} {
		if _, err := s.SetEvictionDays(ctx, days); err == nil || !strings.Contains(err.Error(), "evictionDays") {
			t.Errorf("evictionDays %d: got %v, want an error naming the field", days, err)
		}
	}
	if _, err := s.SetEvictionDays(ctx, 30); err != nil {
		t.Fatal(err)
	}
	stat, err := s.Enable(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !stat.Enabled || stat.EvictionDays != 30 || stat.Online {
		t.Errorf("status after enable (no process in this mode): %+v", stat)
	}
	again, err := NewService(ctx, ServiceOptions{Store: st})
	if err != nil {
		t.Fatal(err)
	}
	if got := again.Settings(); !got.Enabled || !got.EverEnabled || got.EvictionDays != 30 {
		t.Errorf("reloaded: %+v", got)
	}
	if _, err := again.Disable(ctx); err != nil {
		t.Fatal(err)
	}
	var raw Settings
	if ok, err := st.GetSetting(ctx, SettingsKey, &raw); !ok || err != nil || raw.Enabled || !raw.EverEnabled {
		t.Errorf("stored after disable: %+v %v %v", raw, ok, err)
	}
}

// TestEvictionJobNotDuplicated toggles the cache many times: one eviction
// job stays alive, and each tick evicts once, only while enabled.
func TestEvictionJobNotDuplicated(t *testing.T) {
	s, _ := newTestService(t)
	tick := make(chan time.Time)
	s.tick = tick
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); s.Run(ctx) }()
	defer func() { cancel(); <-done }()
	waitFor(t, "the eviction job", 5*time.Second, func() bool { return s.jobs.Load() == 1 })

	for i := 0; i < 5; i++ {
		if _, err := s.Enable(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Disable(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Enable(ctx); err != nil {
		t.Fatal(err)
	}
	// A second Run refuses to start a second job.
	s.Run(ctx)
	if n := s.jobs.Load(); n != 1 {
		t.Fatalf("%d eviction jobs after re-enabling, want 1", n)
	}

	// An unbuffered send returns once the job took the tick; the next send
	// returns only after that tick's eviction finished.
	tick <- time.Now()
	tick <- time.Now()
	if n := s.evicted.Load(); n < 1 || n > 2 {
		t.Fatalf("%d evictions after 2 ticks", n)
	}
	waitFor(t, "the second eviction", 5*time.Second, func() bool { return s.evicted.Load() == 2 })
	if _, err := s.Disable(ctx); err != nil {
		t.Fatal(err)
	}
	tick <- time.Now()
	tick <- time.Now()
	if n := s.evicted.Load(); n != 2 {
		t.Fatalf("%d evictions: ticks while disabled evicted", n)
	}
}
