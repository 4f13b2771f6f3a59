package backup

import (
	"archive/tar"
	"atelier/internal/logkeeper"
	"atelier/internal/testenv"
	"bytes"
	"compress/gzip"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"atelier/internal/client"
	"atelier/internal/config"
	"atelier/internal/guest"
	"atelier/internal/secretbox"
	"atelier/internal/server"
	"atelier/internal/store"
)

func freePort(t *testing.T) int { return testenv.FreePort(t) }

func mockConfig(t *testing.T, dir string) (*config.Config, string) {
	t.Helper()
	file := filepath.Join(dir, "sandbox.config.json")
	body := fmt.Sprintf(`{"server": {"mode": "mock", "host": "127.0.0.1", "port": %d, "dataDir": %q},
 "domain": {"httpPort": %d, "httpsPort": %d, "ssh": {"port": %d}},
 "sandbox": {"stateDir": %q, "logDir": %q}}`, freePort(t), filepath.Join(dir, "data"),
		freePort(t), freePort(t), freePort(t), filepath.Join(dir, "state"), filepath.Join(dir, "log"))
	if err := os.WriteFile(file, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(config.Options{File: file, Env: []string{}})
	if err != nil {
		t.Fatal(err)
	}
	return cfg, file
}

// dump reads what a restored host must have back: sandboxes, token
// hashes and routes.
func dump(t *testing.T, dataDir string) string {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+filepath.Join(dataDir, store.DBFile)+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var out []string
	for _, q := range []string{
		`SELECT id || ' ' || status || ' ' || name FROM sandboxes`,
		`SELECT name || ' ' || hex(hash) FROM api_tokens`,
		`SELECT host || ' ' || sandbox_id || ' ' || kind FROM routes`,
	} {
		rows, err := db.Query(q)
		if err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		for rows.Next() {
			var s string
			if err := rows.Scan(&s); err != nil {
				t.Fatal(err)
			}
			out = append(out, s)
		}
		rows.Close()
	}
	sort.Strings(out)
	return strings.Join(out, "\n")
}

// TestBackupRestoreRoundTrip: a backup taken while a manager runs with a
// sandbox, a token and routes restores them (and the keys) on another data
// dir; restore refuses while a manager uses the data dir.
func TestBackupRestoreRoundTrip(t *testing.T) {
	ctx := context.Background()
	cfg, cfgFile := mockConfig(t, t.TempDir())
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	srv, err := server.New(ctx, cfg, server.Options{Log: log})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Listen(false); err != nil {
		t.Fatal(err)
	}
	sctx, stop := context.WithCancel(ctx)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(sctx) }()
	stopped := false
	stopServer := func() {
		if !stopped {
			stopped = true
			stop()
			<-served
		}
	}
	t.Cleanup(stopServer)

	c, err := client.New("unix://"+cfg.Server.SocketPath, "")
	if err != nil {
		t.Fatal(err)
	}
	sb, err := c.CreateSandbox(ctx, client.CreateRequest{Name: "kept"}, true)
	if err != nil || sb.Status != "running" {
		t.Fatalf("create: %+v %v", sb, err)
	}
	t.Cleanup(func() { _ = srv.Sandboxes.Destroy(context.Background(), sb.ID) })
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", cfg.Server.SocketPath)
	}}}
	resp, err := hc.Post("http://atelier/api/tokens", "application/json", strings.NewReader(`{"name": "ci"}`))
	if err != nil || resp.StatusCode != http.StatusCreated {
		t.Fatalf("create token: %v %v", resp, err)
	}
	resp.Body.Close()
	want := dump(t, cfg.Server.DataDir)
	if !strings.Contains(want, "sandbox-"+sb.ID) || !strings.Contains(want, "ci ") {
		t.Fatalf("nothing to back up:\n%s", want)
	}

	var archive bytes.Buffer
	m, err := Create(ctx, Options{Config: cfg, ConfigFile: cfgFile, Version: "test"}, &archive)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"data/atelier.db", "data/" + secretbox.KeyFile, "data/" + HostKeyFile, ConfigName} {
		if !contains(m.Files, f) {
			t.Errorf("archive lacks %s: %v", f, m.Files)
		}
	}

	// The running manager's data dir is not restored over.
	_, err = Restore(ctx, RestoreOptions{Config: cfg, ConfigFile: cfgFile, Force: true}, bytes.NewReader(archive.Bytes()))
	if err == nil || !strings.Contains(err.Error(), "restore refused") {
		t.Fatalf("restore over a running manager: %v", err)
	}
	if err := srv.Sandboxes.Destroy(ctx, sb.ID); err != nil {
		t.Fatal(err)
	}
	stopServer()

	cfg2, cfgFile2 := mockConfig(t, t.TempDir())
	m2, err := Restore(ctx, RestoreOptions{Config: cfg2, ConfigFile: cfgFile2}, bytes.NewReader(archive.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	if len(m2.Files) != len(m.Files) {
		t.Fatalf("restored %v", m2.Files)
	}
	if got := dump(t, cfg2.Server.DataDir); got != want {
		t.Fatalf("restored data differs:\n%s\nwant\n%s", got, want)
	}
	for _, f := range []string{secretbox.KeyFile, HostKeyFile} {
		a, _ := os.ReadFile(filepath.Join(cfg.Server.DataDir, f))
		b, err := os.ReadFile(filepath.Join(cfg2.Server.DataDir, f))
		if err != nil || !bytes.Equal(a, b) {
			t.Errorf("%s not restored: %v", f, err)
		}
		if fi, _ := os.Stat(filepath.Join(cfg2.Server.DataDir, f)); fi.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %v", f, fi.Mode())
		}
	}
	if fi, _ := os.Stat(cfg2.Server.DataDir); fi.Mode().Perm() != 0o700 {
		t.Errorf("data dir mode %v", fi.Mode())
	}
	if b, _ := os.ReadFile(cfgFile2); !bytes.Contains(b, []byte(cfg.Server.DataDir)) {
		t.Errorf("config file not restored: %s", b)
	}
	// A second restore needs --force and keeps what it replaces.
	if _, err := Restore(ctx, RestoreOptions{Config: cfg2, ConfigFile: cfgFile2}, bytes.NewReader(archive.Bytes())); err == nil || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("restore over a database without --force: %v", err)
	}
	if _, err := Restore(ctx, RestoreOptions{Config: cfg2, ConfigFile: cfgFile2, Force: true}, bytes.NewReader(archive.Bytes())); err != nil {
		t.Fatal(err)
	}
	kept, _ := filepath.Glob(filepath.Join(cfg2.Server.DataDir, "restore-replaced", "*", store.DBFile))
	if len(kept) != 1 {
		t.Fatalf("replaced database not kept aside: %v", kept)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// TestRestoreRefusesHostileArchives: entries outside the expected names,
// links and devices are refused before anything is written.
func TestRestoreRefusesHostileArchives(t *testing.T) {
	for _, tc := range []struct {
		name string
		hdr  tar.Header
	}{
		{"dotdot", tar.Header{Name: "data/../../etc/cron.d/x", Typeflag: tar.TypeReg}},
		{"absolute", tar.Header{Name: "/etc/passwd", Typeflag: tar.TypeReg}},
		{"symlink", tar.Header{Name: "data/secrets.key", Typeflag: tar.TypeSymlink, Linkname: "/etc/shadow"}},
		{"other", tar.Header{Name: "etc/shadow", Typeflag: tar.TypeReg}},
	} {
		var b bytes.Buffer
		gz := gzip.NewWriter(&b)
		tw := tar.NewWriter(gz)
		tc.hdr.Mode, tc.hdr.ModTime = 0o600, time.Now()
		if err := tw.WriteHeader(&tc.hdr); err != nil {
			t.Fatal(err)
		}
		tw.Close()
		gz.Close()
		cfg, file := mockConfig(t, t.TempDir())
		_, err := Restore(context.Background(), RestoreOptions{Config: cfg, ConfigFile: file}, &b)
		if err == nil || !strings.Contains(err.Error(), "restore:") {
			t.Errorf("%s: %v", tc.name, err)
		}
		if _, err := os.Stat(filepath.Join(cfg.Server.DataDir, store.DBFile)); err == nil {
			t.Errorf("%s: something was restored", tc.name)
		}
	}
}

// TestCopyDBOnline: the copy is a consistent database while a writer goes on.
func TestCopyDBOnline(t *testing.T) {
	dir := t.TempDir()
	st, err := store.Open(context.Background(), dir, store.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	dst := filepath.Join(t.TempDir(), "copy.db")
	if err := CopyDB(context.Background(), filepath.Join(dir, store.DBFile), dst); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(dst); fi.Mode().Perm() != 0o600 {
		t.Fatalf("copy mode %v", fi.Mode())
	}
	db, _ := sql.Open("sqlite", "file:"+dst+"?mode=ro")
	defer db.Close()
	var res string
	if err := db.QueryRow("PRAGMA integrity_check").Scan(&res); err != nil || res != "ok" {
		t.Fatalf("integrity %q %v", res, err)
	}
	if err := CopyDB(context.Background(), filepath.Join(dir, store.DBFile), dst); err == nil {
		t.Fatal("CopyDB overwrote an existing file")
	}
}

// TestMain lets this test binary be mock mode's agent: the manager runs
// its own executable with "agent" for every sandbox.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == "agent" {
		os.Exit(guest.Main(os.Args[2:]))
	}
	logkeeper.MainIfKeeper()
	os.Exit(m.Run())
}

// TestBackupRefusesAPostgresStore: backup and restore of a PostgreSQL
// store refuse, naming the key and pg_dump, and write nothing.
func TestBackupRefusesAPostgresStore(t *testing.T) {
	cfg, _ := mockConfig(t, t.TempDir())
	cfg.Advanced.Server.Database.URL = "postgres://atelier@127.0.0.1:5432/atelier?sslmode=disable"
	var out bytes.Buffer
	_, err := Create(context.Background(), Options{Config: cfg}, &out)
	if err == nil || out.Len() != 0 {
		t.Fatalf("backup: err %v, %d bytes written; want a refusal writing nothing", err, out.Len())
	}
	_, rerr := Restore(context.Background(), RestoreOptions{Config: cfg}, strings.NewReader("not read"))
	for _, e := range []error{err, rerr} {
		if e == nil || !errors.Is(e, ErrPostgres) || !strings.Contains(e.Error(), "advanced.server.database.url") || !strings.Contains(e.Error(), "pg_dump") {
			t.Errorf("refusal %v: want ErrPostgres naming the key and pg_dump", e)
		}
	}
	if ents, _ := os.ReadDir(cfg.Server.DataDir); len(ents) != 0 {
		t.Errorf("data dir written: %v", ents)
	}
}
