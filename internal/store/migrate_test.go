package store

import (
	"context"
	"database/sql"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"testing/fstest"
	"time"
)

func TestEmbeddedMigrationsAreContiguous(t *testing.T) {
	ms, err := loadMigrations(migrationFS)
	if err != nil {
		t.Fatalf("loadMigrations: %v", err)
	}
	if len(ms) == 0 || ms[0].name != "0001_init.sql" {
		t.Fatalf("first migration = %+v, want 0001_init.sql", ms)
	}
}

func TestLoadMigrationsValidatesNames(t *testing.T) {
	tests := []struct {
		name    string
		files   []string
		wantErr string
	}{
		{"ordered", []string{"0002_b.sql", "0001_a.sql"}, ""},
		{"gap", []string{"0001_a.sql", "0003_c.sql"}, "expected version 2"},
		{"duplicate version", []string{"0001_a.sql", "0001_b.sql"}, "expected version 2"},
		{"no description", []string{"0001.sql"}, "NNNN_description"},
		{"not a number", []string{"init_schema.sql"}, "NNNN_description"},
		{"zero", []string{"0000_a.sql"}, "NNNN_description"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fsys := fstest.MapFS{}
			for _, f := range tt.files {
				fsys["migrations/"+f] = &fstest.MapFile{Data: []byte("SELECT 1;")}
			}
			ms, err := loadMigrations(fsys)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				for i, m := range ms {
					if m.version != i+1 {
						t.Errorf("migration %d has version %d", i, m.version)
					}
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want containing %q", err, tt.wantErr)
			}
		})
	}
}

func migrationRows(t *testing.T, db *sql.DB) map[int]string {
	t.Helper()
	rows, err := db.Query(`SELECT version, applied_at FROM schema_migrations`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[int]string{}
	for rows.Next() {
		var (
			v  int
			at string
		)
		if err := rows.Scan(&v, &at); err != nil {
			t.Fatal(err)
		}
		out[v] = at
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestReopenIsIdempotent(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, err := Open(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.PutSetting(ctx, "k", "v"); err != nil {
		t.Fatal(err)
	}
	before := migrationRows(t, s.w)
	ms, _ := loadMigrations(migrationFS)
	if len(before) != len(ms) {
		t.Fatalf("recorded %d migrations, embedded %d", len(before), len(ms))
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	for i := range 2 {
		s, err = Open(ctx, dir)
		if err != nil {
			t.Fatalf("reopen %d: %v", i, err)
		}
		after := migrationRows(t, s.w)
		if len(after) != len(before) {
			t.Fatalf("reopen %d: migrations %v, want %v", i, after, before)
		}
		for v, at := range before {
			if after[v] != at {
				t.Errorf("reopen %d: migration %d re-applied (applied_at %s -> %s)", i, v, at, after[v])
			}
		}
		var got string
		if ok, err := s.GetSetting(ctx, "k", &got); err != nil || !ok || got != "v" {
			t.Errorf("reopen %d: data lost: %q %v %v", i, got, ok, err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

func TestOpenRefusesNewerSchema(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, err := Open(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.w.ExecContext(ctx, `INSERT INTO schema_migrations (version, applied_at) VALUES (9999, 'x')`); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s, err = Open(ctx, dir)
	if err == nil {
		s.Close()
		t.Fatal("Open accepted a database with an unknown migration")
	}
	for _, want := range []string{"9999", "unknown to this binary", "upgrade"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}

func TestFailedMigrationLeavesNoTrace(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	base, err := loadMigrations(migrationFS)
	if err != nil {
		t.Fatal(err)
	}
	n := len(base)
	bad := migration{version: n + 1, name: "bad.sql", sql: `CREATE TABLE half (x INTEGER); INSERT INTO nowhere VALUES (1);`}
	err = applyMigrations(ctx, s.w, append(base, bad), s.dialect())
	if err == nil || !strings.Contains(err.Error(), "bad.sql") {
		t.Fatalf("applyMigrations = %v, want an error naming bad.sql", err)
	}
	if _, ok := migrationRows(t, s.w)[n+1]; ok {
		t.Error("failed migration was recorded")
	}
	var rows int
	if err := s.w.QueryRow(`SELECT count(*) FROM half`).Scan(&rows); err == nil {
		t.Error("failed migration's first statement was not rolled back")
	}

	good := migration{version: n + 1, name: "good.sql", sql: `CREATE TABLE extra (x INTEGER); CREATE UNIQUE INDEX extra_x ON extra(x);`}
	if err := applyMigrations(ctx, s.w, append(base, good), s.dialect()); err != nil {
		t.Fatalf("multi-statement migration: %v", err)
	}
	// Both statements ran: the table exists and its unique index refuses a duplicate.
	if _, err := s.w.Exec(`INSERT INTO extra (x) VALUES (1)`); err != nil {
		t.Fatal(err)
	}
	if _, err := s.w.Exec(`INSERT INTO extra (x) VALUES (1)`); !isUnique(err) {
		t.Errorf("second insert = %v, want a unique violation from the migration's index", err)
	}
}

// TestLifecycleMigrationRecordsVolumeDrivers upgrades a database holding
// sandboxes from before 0004: each learns its volume driver from the path
// its create journaled.
func TestLifecycleMigrationRecordsVolumeDrivers(t *testing.T) {
	ctx := context.Background()
	ms, err := loadMigrations(migrationFS)
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(ms, func(m migration) bool { return strings.HasSuffix(m.name, "_lifecycle.sql") })
	if i < 0 {
		t.Fatal("no lifecycle migration")
	}
	db, err := openDB(ctx, dsn(filepath.Join(t.TempDir(), DBFile), true))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := applyMigrations(ctx, db, ms[:i]); err != nil {
		t.Fatal(err)
	}
	now := fmtTime(time.Now())
	for id, detail := range map[string]string{
		"lvmlvmlvmlvm": "/dev/sandbox-vg/sandbox-lvmlvmlvmlvm",
		"filefilefile": "/var/lib/sandbox/overlays/filefilefile.ext4",
		"nonenonenone": "",
	} {
		if _, err := db.ExecContext(ctx, `INSERT INTO sandboxes (id, owner_id, status, created_at, updated_at)
			VALUES (?, 'u', 'stopped', ?, ?)`, id, now, now); err != nil {
			t.Fatal(err)
		}
		if detail == "" {
			continue
		}
		for _, st := range []string{"undone", "done"} { // a failed create, then a start
			if _, err := db.ExecContext(ctx, `INSERT INTO sandbox_ops (sandbox_id, op, step, state, detail, created_at, updated_at)
				VALUES (?, 'create', 'volume', ?, ?, ?, ?)`, id, st, detail, now, now); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := applyMigrations(ctx, db, ms); err != nil {
		t.Fatal(err)
	}
	s := &Store{w: db, r: db, now: time.Now}
	for id, want := range map[string]string{"lvmlvmlvmlvm": "lvm", "filefilefile": "file", "nonenonenone": ""} {
		sb, err := s.GetSandbox(ctx, id)
		if err != nil || sb.VolumeDriver != want || sb.DiskBytes != 0 {
			t.Errorf("%s: driver %q disk %d (%v), want %q and 0", id, sb.VolumeDriver, sb.DiskBytes, err, want)
		}
	}
}
