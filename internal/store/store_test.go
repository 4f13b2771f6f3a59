package store

import (
	"bytes"
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"atelier/internal/testenv"
)

// openTest opens a fresh store, in a temporary directory or, in the
// Postgres run of the suite (see TestMain), in a fresh Postgres database,
// and closes it at the end of the test.
func openTest(t testing.TB) *Store {
	t.Helper()
	var opts []Option
	if onPostgres() {
		opts = append(opts, WithDatabaseURL(testenv.PostgresDB(t)))
	}
	s, err := Open(context.Background(), t.TempDir(), opts...)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

// fixedClock makes the store's own timestamps predictable.
func fixedClock(s *Store, t time.Time) { s.now = func() time.Time { return t } }

// sbID builds a valid 12-character sandbox id from n.
func sbID(n int) string { return fmt.Sprintf("sb%010d", n) }

// odd is a time in a non-UTC zone with full nanosecond precision, to check
// that stored times come back equal and in UTC.
var odd = time.Date(2025, 3, 4, 5, 6, 7, 123456789, time.FixedZone("plus1", 3600))

func TestOpenCreatesPrivateDirAndConfiguresSQLite(t *testing.T) {
	ctx := context.Background()
	// Characters that are special in a DSN or URI must not confuse the driver.
	dir := filepath.Join(t.TempDir(), "data dir?x=1#frag", "nested")
	s, err := Open(ctx, dir)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer s.Close()

	fi, err := os.Stat(dir)
	if err != nil {
		t.Fatalf("stat data dir: %v", err)
	}
	if perm := fi.Mode().Perm(); perm != 0o700 {
		t.Errorf("data dir mode = %o, want 700", perm)
	}
	if _, err := os.Stat(filepath.Join(dir, DBFile)); err != nil {
		t.Errorf("database file not at %s: %v", DBFile, err)
	}
	if err := s.Ping(ctx); err != nil {
		t.Errorf("Ping: %v", err)
	}

	pragmas := []struct {
		name string
		want string
	}{
		{"journal_mode", "wal"},
		{"foreign_keys", "1"},
		{"synchronous", "1"}, // NORMAL
		{"busy_timeout", fmt.Sprint(busyTimeout.Milliseconds())},
	}
	for _, p := range pragmas {
		for name, db := range map[string]*sql.DB{"writer": s.w, "reader": s.r} {
			var got string
			if err := db.QueryRowContext(ctx, "PRAGMA "+p.name).Scan(&got); err != nil {
				t.Fatalf("%s: PRAGMA %s: %v", name, p.name, err)
			}
			if got != p.want {
				t.Errorf("%s: PRAGMA %s = %q, want %q", name, p.name, got, p.want)
			}
		}
	}

	// The read pool must not be able to write, so no write can bypass the
	// serialising write connection.
	if _, err := s.r.ExecContext(ctx, `INSERT INTO settings (key, value, updated_at) VALUES ('k', '1', 'x')`); err == nil {
		t.Error("read pool accepted a write")
	}
}

func TestOpenRejectsEmptyDir(t *testing.T) {
	if _, err := Open(context.Background(), ""); err == nil {
		t.Fatal("Open(\"\") succeeded")
	}
}

func TestTimeLayoutSortsAsText(t *testing.T) {
	// With time.RFC3339Nano, "…05.1Z" sorts after "…05.12Z".
	a := time.Date(2025, 1, 1, 0, 0, 5, 100_000_000, time.UTC)
	b := time.Date(2025, 1, 1, 0, 0, 5, 120_000_000, time.UTC)
	if !(fmtTime(a) < fmtTime(b)) {
		t.Fatalf("fmtTime(%v)=%s not < fmtTime(%v)=%s", a, fmtTime(a), b, fmtTime(b))
	}
	got, err := parseTime(fmtTime(odd))
	if err != nil {
		t.Fatal(err)
	}
	if !got.Equal(odd) || got.Location() != time.UTC {
		t.Fatalf("round trip of %v = %v", odd, got)
	}
}

// TestOpenRestrictsDataDir reproduces the install that ran before the
// first serve: the data dir 0755 and a database (with its -wal and -shm)
// 0644, readable by every local user. Open, under umask 0, leaves the dir
// 0700 and every file 0600, logs what it changed, and the -wal and -shm
// SQLite creates afterwards are 0600 too.
func TestOpenRestrictsDataDir(t *testing.T) {
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	dir := filepath.Join(t.TempDir(), "data")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	// The database as SQLite itself creates it (0644 less the umask).
	db, err := sql.Open("sqlite", filepath.Join(dir, DBFile))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec("CREATE TABLE t (x); INSERT INTO t VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	db.Close()
	for _, name := range []string{DBFile + "-wal", DBFile + "-shm", "ssh_host_ed25519_key"} {
		if err := os.WriteFile(filepath.Join(dir, name), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(dir, "caddy"), 0o755); err != nil {
		t.Fatal(err)
	}
	// Not followed: a link in the data dir to a file elsewhere.
	elsewhere := filepath.Join(t.TempDir(), "elsewhere")
	if err := os.WriteFile(elsewhere, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(elsewhere, filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]os.FileMode{"": 0o755, DBFile: 0o644} {
		if fi, _ := os.Stat(filepath.Join(dir, name)); fi.Mode().Perm() != want {
			t.Fatalf("setup: %s is %04o, want %04o", name, fi.Mode().Perm(), want)
		}
	}

	var logs bytes.Buffer
	s, err := Open(context.Background(), dir, WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.PutSetting(context.Background(), "k", "v"); err != nil { // writes the WAL
		t.Fatal(err)
	}
	check := func(name string, want os.FileMode) {
		t.Helper()
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Errorf("%s: %v", name, err)
		} else if fi.Mode().Perm() != want {
			t.Errorf("%s is %04o, want %04o", name, fi.Mode().Perm(), want)
		}
	}
	check("", 0o700)
	check(DBFile, 0o600)
	check(DBFile+"-wal", 0o600)
	check(DBFile+"-shm", 0o600)
	check("ssh_host_ed25519_key", 0o600)
	check("caddy", 0o700)
	if fi, _ := os.Stat(elsewhere); fi.Mode().Perm() != 0o644 {
		t.Errorf("the target of a symlink in the data dir was changed to %04o", fi.Mode().Perm())
	}
	if n := strings.Count(logs.String(), "restricted"); n != 6 {
		t.Errorf("%d log lines about restricted entries, want 6:\n%s", n, logs.String())
	}

	// A fresh data dir under umask 0: created private.
	fresh := filepath.Join(t.TempDir(), "fresh", "data")
	s2, err := Open(context.Background(), fresh)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if err := s2.PutSetting(context.Background(), "k", "v"); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"", DBFile, DBFile + "-wal", DBFile + "-shm"} {
		want := os.FileMode(0o600)
		if name == "" {
			want = 0o700
		}
		if fi, err := os.Stat(filepath.Join(fresh, name)); err != nil || fi.Mode().Perm() != want {
			t.Errorf("fresh %q: %v %v, want %04o", name, fi.Mode(), err, want)
		}
	}
}
