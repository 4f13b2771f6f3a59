package store

import (
	"context"
	"database/sql"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"

	"atelier/internal/testenv"
)

// TestPrebuildSource runs on both backends: the source of the ready
// prebuild is stored, a failed rebuild leaves it, a value outside
// build/promote is refused by the schema.
func TestPrebuildSource(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	w := newTestWorkspace(t, s)
	if err := s.BeginPrebuild(ctx, w); err != nil {
		t.Fatal(err)
	}
	p, err := s.UpdatePrebuild(ctx, w, func(p *Prebuild) {
		p.Status, p.Ready, p.Source, p.SourceSandboxID = PrebuildReady, true, SourcePromote, "sbxpromote01"
	})
	if err != nil || p.Source != SourcePromote {
		t.Fatalf("promote: %+v %v", p, err)
	}
	if err := s.BeginPrebuild(ctx, w); err != nil {
		t.Fatal(err)
	}
	if _, err := s.UpdatePrebuild(ctx, w, func(p *Prebuild) { p.Status, p.Error = PrebuildFailed, "exit 3" }); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetPrebuild(ctx, w)
	if err != nil || got.Source != SourcePromote || got.SourceSandboxID != "sbxpromote01" || !got.Ready {
		t.Fatalf("after a failed rebuild: %+v %v", got, err)
	}
	if _, err := s.UpdatePrebuild(ctx, w, func(p *Prebuild) { p.Source = "elsewhere" }); err == nil {
		t.Fatal("source elsewhere accepted")
	}
	if l, err := s.ListPrebuilds(ctx); err != nil || len(l) != 1 || l[0].Source != SourcePromote {
		t.Fatalf("list: %+v %v", l, err)
	}
}

func newTestWorkspace(t *testing.T, s *Store) string {
	t.Helper()
	ctx := context.Background()
	if _, err := s.EnsureUser(ctx, User{ID: "alice", Login: "alice"}); err != nil {
		t.Fatal(err)
	}
	w, err := s.CreateWorkspace(ctx, Workspace{OwnerID: "alice", Name: "web", Config: []byte(`{}`)}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	return w.ID
}

// TestPrebuildSourceMigration upgrades, on both backends, a database from
// before 0008: a ready prebuild whose log says it was promoted gets source
// promote and the sandbox id, another ready one build, one never ready
// none.
func TestPrebuildSourceMigration(t *testing.T) {
	ctx := context.Background()
	ms, err := loadMigrations(migrationFS)
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(ms, func(m migration) bool { return strings.HasSuffix(m.name, "_prebuild_source.sql") })
	if i < 0 {
		t.Fatal("no prebuild source migration")
	}
	var (
		db *sql.DB
		d  = dialectSQLite
	)
	if onPostgres() {
		cfg, err := pgx.ParseConfig(testenv.PostgresDB(t))
		if err != nil {
			t.Fatal(err)
		}
		db, d = sql.OpenDB(rebindConnector{stdlib.GetConnector(*cfg)}), dialectPostgres
	} else if db, err = openDB(ctx, dsn(filepath.Join(t.TempDir(), DBFile), true)); err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := applyMigrations(ctx, db, ms[:i], d); err != nil {
		t.Fatal(err)
	}
	now := fmtTime(time.Now())
	if _, err := db.ExecContext(ctx, `INSERT INTO users (id, login, created_at, updated_at) VALUES ('u', 'u', ?, ?)`, now, now); err != nil {
		t.Fatal(err)
	}
	rows := map[string]struct {
		ready int
		log   string
	}{
		"wspromoted01": {1, "12:00:01 promoted from sandbox sbxfrom00001\n12:00:02 stopping the sandbox\n"},
		"wsbuilt00001": {1, "12:00:01 build sandbox sbxbuild0001 created\n"},
		"wsnever00001": {0, "12:00:01 build sandbox sbxbuild0002 created\n12:00:09 exit 3\n"},
	}
	for id, r := range rows {
		if _, err := db.ExecContext(ctx, `INSERT INTO workspaces (id, owner_id, name, config, created_at, updated_at)
			VALUES (?, 'u', ?, '{}', ?, ?)`, id, id, now, now); err != nil {
			t.Fatal(err)
		}
		if _, err := db.ExecContext(ctx, `INSERT INTO prebuilds (workspace_id, status, ready, log, updated_at) VALUES (?, 'ready', ?, ?, ?)`,
			id, r.ready, r.log, now); err != nil {
			t.Fatal(err)
		}
	}
	if err := applyMigrations(ctx, db, ms, d); err != nil {
		t.Fatal(err)
	}
	s := &Store{w: db, r: db, pg: d == dialectPostgres, now: time.Now}
	for id, want := range map[string][2]string{
		"wspromoted01": {SourcePromote, "sbxfrom00001"},
		"wsbuilt00001": {SourceBuild, ""},
		"wsnever00001": {"", ""},
	} {
		p, err := s.GetPrebuild(ctx, id)
		if err != nil || p.Source != want[0] || p.SourceSandboxID != want[1] {
			t.Errorf("%s: source %q %q (%v), want %q", id, p.Source, p.SourceSandboxID, err, want)
		}
	}
}
