package store

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// openTest opens a fresh store in a temporary directory and closes it at
// the end of the test.
func openTest(t testing.TB) *Store {
	t.Helper()
	s, err := Open(context.Background(), t.TempDir())
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
