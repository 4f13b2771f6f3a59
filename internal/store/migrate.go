// Migrations: the rules for anyone adding internal/store/migrations/00NN_name.sql.
//
// One set of files serves both backends, SQLite (embedded) and PostgreSQL
// (advanced.server.database.url). Every migration runs on both in the store
// tests (ATELIER_TEST_STRICT makes a missing Postgres a failure), so:
//
//   - Number: the next free NNNN, contiguous from 0001; never edit an applied file.
//
//   - Types: write TEXT, INTEGER, BLOB in capitals. On Postgres they become
//     TEXT COLLATE "C" (bytewise order, as in SQLite), BIGINT, BYTEA, and
//     `INTEGER PRIMARY KEY AUTOINCREMENT` an identity column. Booleans are
//     INTEGER 0/1 with a CHECK; times are TEXT in the fixed-width RFC 3339
//     layout of fmtTime (compare and sort them as text, never with date
//     functions); JSON is TEXT.
//
//   - SQL: what both accept: CREATE TABLE/INDEX (partial indexes too),
//     ALTER TABLE ADD COLUMN (one column per statement), CHECK, REFERENCES
//     ... ON DELETE CASCADE, INSERT ... ON CONFLICT, RETURNING, CASE,
//     coalesce, EXISTS, LIKE on ASCII. Not: INSERT OR REPLACE/IGNORE,
//     strftime/datetime, typeof, PRAGMA, ALTER TABLE DROP/RENAME COLUMN,
//     WITHOUT ROWID, untyped columns, `"` for strings.
//
//   - When a statement cannot be written for both (a data fix-up using date
//     arithmetic, say), split only that statement:
//
//     -- dialect: sqlite
//     UPDATE t SET at = strftime(...);
//     -- dialect: postgres
//     UPDATE t SET at = to_char(...);
//     -- dialect: all
//
//   - Code: write `?` placeholders; the Postgres connection rebinds them.
//     Write transactions go through Store.tx (serialised on both backends).
//     Unique and foreign-key violations: isUnique, uniqueOn, isForeignKey.
package store

import (
	"context"
	"database/sql"
	"embed"
	"fmt"
	"io/fs"
	"path"
	"sort"
	"strconv"
	"strings"
	"time"
)

//go:embed migrations/*.sql
var migrationFS embed.FS

type migration struct {
	version int
	name    string
	sql     string
}

// loadMigrations reads the embedded NNNN_name.sql files and checks that the
// versions run 1, 2, 3... without gaps or duplicates, so a bad file name is
// caught by tests rather than by a half-migrated production database.
func loadMigrations(fsys fs.FS) ([]migration, error) {
	names, err := fs.Glob(fsys, "migrations/*.sql")
	if err != nil {
		return nil, fmt.Errorf("list migrations: %w", err)
	}
	var ms []migration
	for _, n := range names {
		base := path.Base(n)
		num, _, ok := strings.Cut(base, "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil || v <= 0 {
			return nil, fmt.Errorf("migration %s: name must be NNNN_description.sql", base)
		}
		body, err := fs.ReadFile(fsys, n)
		if err != nil {
			return nil, fmt.Errorf("read migration %s: %w", base, err)
		}
		ms = append(ms, migration{version: v, name: base, sql: string(body)})
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i].version < ms[j].version })
	for i, m := range ms {
		if m.version != i+1 {
			return nil, fmt.Errorf("migration %s: expected version %d (versions must be contiguous from 1)", m.name, i+1)
		}
	}
	return ms, nil
}

// applyMigrations applies every migration of ms not yet recorded, each in
// its own immediate transaction, as written for d (see forDialect; sqlite
// when d is omitted). db must be the write connection.
func applyMigrations(ctx context.Context, db *sql.DB, ms []migration, d ...dialect) error {
	dl := dialectSQLite
	if len(d) > 0 {
		dl = d[0]
	}
	create, _ := forDialect(`CREATE TABLE IF NOT EXISTS schema_migrations (
		version    INTEGER PRIMARY KEY,
		applied_at TEXT NOT NULL
	)`, dl)
	// Two managers starting together on one Postgres: the lock makes the
	// second wait, then find the table and the versions already there.
	if err := inMigrationTx(ctx, db, dl, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, create)
		return err
	}); err != nil {
		return fmt.Errorf("create schema_migrations: %w", err)
	}
	known := make(map[int]bool, len(ms))
	for _, m := range ms {
		known[m.version] = true
	}
	latest := len(ms)

	applied, err := appliedVersions(ctx, db)
	if err != nil {
		return err
	}
	// Running an old binary against a newer schema would silently misread
	// or corrupt data the newer code relies on.
	for v := range applied {
		if !known[v] {
			return fmt.Errorf("database has schema version %d, unknown to this binary (latest known %d): upgrade atelier", v, latest)
		}
	}

	for _, m := range ms {
		if applied[m.version] {
			continue
		}
		if err := applyOne(ctx, db, m, dl); err != nil {
			return err
		}
	}
	return nil
}

func appliedVersions(ctx context.Context, db *sql.DB) (map[int]bool, error) {
	rows, err := db.QueryContext(ctx, `SELECT version FROM schema_migrations`)
	if err != nil {
		return nil, fmt.Errorf("read schema_migrations: %w", err)
	}
	defer rows.Close()
	applied := map[int]bool{}
	for rows.Next() {
		var v int
		if err := rows.Scan(&v); err != nil {
			return nil, fmt.Errorf("read schema_migrations: %w", err)
		}
		applied[v] = true
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read schema_migrations: %w", err)
	}
	return applied, nil
}

func inMigrationTx(ctx context.Context, db *sql.DB, d dialect, fn func(*sql.Tx) error) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	defer func() { _ = tx.Rollback() }()
	if d == dialectPostgres {
		if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock(?)`, int64(writeLockKey)); err != nil {
			return fmt.Errorf("take the write lock: %w", err)
		}
	}
	if err := fn(tx); err != nil {
		return err
	}
	return tx.Commit()
}

func applyOne(ctx context.Context, db *sql.DB, m migration, d dialect) error {
	body, err := forDialect(m.sql, d)
	if err != nil {
		return fmt.Errorf("migration %s: %w", m.name, err)
	}
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("migration %s: begin: %w", m.name, err)
	}
	defer func() { _ = tx.Rollback() }()
	if d == dialectPostgres {
		if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock(?)`, int64(writeLockKey)); err != nil {
			return fmt.Errorf("migration %s: take the write lock: %w", m.name, err)
		}
	}

	// Another process may have applied it between our read and our lock.
	var n int
	if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM schema_migrations WHERE version = ?`, m.version).Scan(&n); err != nil {
		return fmt.Errorf("migration %s: %w", m.name, err)
	}
	if n > 0 {
		return nil
	}
	if _, err := tx.ExecContext(ctx, body); err != nil {
		return fmt.Errorf("migration %s: %w", m.name, err)
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)`,
		m.version, fmtTime(time.Now())); err != nil {
		return fmt.Errorf("migration %s: record: %w", m.name, err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("migration %s: commit: %w", m.name, err)
	}
	return nil
}
