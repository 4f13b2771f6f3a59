package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// DBFile is the database file name inside the data directory.
const DBFile = "atelier.db"

// busyTimeout bounds how long a connection waits on a lock held by another
// process (the CLI, a second manager by mistake). Inside one process writers
// never wait on SQLite at all: they queue on the single write connection.
const busyTimeout = 10 * time.Second

// Store is the SQLite-backed source of truth. It is safe for concurrent use.
//
// Writes go through one connection opened with BEGIN IMMEDIATE, so every
// read-check-write transaction (limits, compare-and-set, leases) is
// serialised and no writer can fail with SQLITE_BUSY from a lock upgrade.
// Plain reads use a separate query-only pool, which WAL lets run alongside
// the writer.
type Store struct {
	w   *sql.DB
	r   *sql.DB // the same pool as w on Postgres
	now func() time.Time
	pg  bool
	// pgcfg opens the LISTEN connection; it holds the password: never log it.
	pgcfg *pgx.ConnConfig
}

// Option adjusts Open.
type Option func(*openOptions)

type openOptions struct {
	log *slog.Logger
	url string
}

// WithDatabaseURL makes Open use the PostgreSQL database at url
// (postgres://user:password@host:port/db?sslmode=...) instead of the
// embedded SQLite file; "" keeps SQLite. The URL is never logged.
func WithDatabaseURL(url string) Option { return func(o *openOptions) { o.url = url } }

// WithLogger sends Open's log lines (permissions it tightened) to log
// instead of slog.Default().
func WithLogger(log *slog.Logger) Option { return func(o *openOptions) { o.log = log } }

// Open creates dataDir if needed, opens {dataDir}/atelier.db and applies
// pending migrations. A database written by a newer binary is refused.
//
// The data dir holds sessions, PKCE verifiers, token hashes and keys, so
// it is made 0700 and the database 0600 whatever created them and whatever
// the umask: see SecureDataDir.
func Open(ctx context.Context, dataDir string, opts ...Option) (*Store, error) {
	o := openOptions{log: slog.Default()}
	for _, opt := range opts {
		opt(&o)
	}
	if o.url != "" {
		st, err := openPostgres(ctx, o.url)
		if err != nil {
			return nil, err
		}
		st.now = time.Now
		return st, nil
	}
	if dataDir == "" {
		return nil, errors.New("open store: empty data directory")
	}
	if err := SecureDataDir(dataDir, o.log); err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	path, err := filepath.Abs(filepath.Join(dataDir, DBFile))
	if err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	// Created here, 0600, rather than by SQLite (0644 less the umask); SQLite
	// gives the -wal and -shm files the database file's mode.
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open store: create %s: %w", path, err)
	}
	f.Close()

	w, err := openDB(ctx, dsn(path, true))
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	w.SetMaxOpenConns(1)
	w.SetMaxIdleConns(1)
	w.SetConnMaxLifetime(0)
	w.SetConnMaxIdleTime(0)

	if err := applyMigrations(ctx, w, mustMigrations(), dialectSQLite); err != nil {
		_ = w.Close()
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}

	r, err := openDB(ctx, dsn(path, false))
	if err != nil {
		_ = w.Close()
		return nil, fmt.Errorf("open store %s: read pool: %w", path, err)
	}
	n := max(4, runtime.NumCPU())
	r.SetMaxOpenConns(n)
	r.SetMaxIdleConns(n)

	return &Store{w: w, r: r, now: time.Now}, nil
}

// SecureDataDir creates dataDir (0700) or tightens it to 0700, and takes
// the group and other bits off every file (to 0600) and directory (to
// 0700) directly inside it: the database and its -wal and -shm, the SSH
// host key, Caddy's storage. A manager older than this, or `atelier
// registry install` run before the first `serve`, left them 0755 and
// 0644. Symlinks and sockets are left alone (the socket is made 0600 when
// it is bound). Each change is logged.
func SecureDataDir(dataDir string, log *slog.Logger) error {
	if log == nil {
		log = slog.Default()
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return fmt.Errorf("create data directory: %w", err)
	}
	fi, err := os.Stat(dataDir)
	if err != nil {
		return fmt.Errorf("data directory: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("data directory %s is not a directory", dataDir)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		if err := os.Chmod(dataDir, 0o700); err != nil {
			return fmt.Errorf("restrict data directory %s to 0700: %w", dataDir, err)
		}
		logRestricted(log, dataDir, fi.Mode(), 0o700)
	}
	// Through a handle on the directory, and never following a symlink: an
	// entry swapped meanwhile cannot redirect a chmod elsewhere.
	root, err := os.OpenRoot(dataDir)
	if err != nil {
		return fmt.Errorf("open data directory: %w", err)
	}
	defer root.Close()
	d, err := root.Open(".")
	if err != nil {
		return fmt.Errorf("read data directory: %w", err)
	}
	names, err := d.Readdirnames(-1)
	d.Close()
	if err != nil {
		return fmt.Errorf("read data directory: %w", err)
	}
	for _, name := range names {
		fi, err := root.Lstat(name)
		if err != nil || fi.Mode().Perm()&0o077 == 0 {
			continue // gone meanwhile, or private already
		}
		want := os.FileMode(0o600)
		switch {
		case fi.IsDir():
			want = 0o700
		case !fi.Mode().IsRegular():
			continue
		}
		if err := root.Chmod(name, want); err != nil {
			return fmt.Errorf("restrict %s to %04o: %w", filepath.Join(dataDir, name), want, err)
		}
		logRestricted(log, filepath.Join(dataDir, name), fi.Mode(), want)
	}
	return nil
}

func logRestricted(log *slog.Logger, p string, was, now os.FileMode) {
	log.Warn("data directory entry was open to other users; restricted", "path", p,
		"was", fmt.Sprintf("%04o", was.Perm()), "now", fmt.Sprintf("%04o", now))
}

func openDB(ctx context.Context, dsn string) (*sql.DB, error) {
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, err
	}
	if err := db.PingContext(ctx); err != nil {
		_ = db.Close()
		return nil, err
	}
	return db, nil
}

// dsn builds a file: URI so that any character in the path survives; the
// underscore parameters are read by the driver and ignored by SQLite.
func dsn(path string, writer bool) string {
	q := url.Values{}
	q.Add("_pragma", fmt.Sprintf("busy_timeout(%d)", busyTimeout.Milliseconds()))
	q.Add("_pragma", "foreign_keys(1)")
	q.Add("_pragma", "synchronous(NORMAL)")
	if writer {
		// journal_mode is persistent in the file; the writer sets it before
		// the read pool exists.
		q.Add("_pragma", "journal_mode(WAL)")
		q.Set("_txlock", "immediate")
	} else {
		q.Add("_pragma", "query_only(1)")
	}
	u := url.URL{Scheme: "file", Path: filepath.ToSlash(path)}
	return "file:" + u.EscapedPath() + "?" + q.Encode()
}

func (s *Store) dialect() dialect {
	if s.pg {
		return dialectPostgres
	}
	return dialectSQLite
}

// Backend names the database behind the store: "sqlite" or "postgres".
func (s *Store) Backend() string { return s.dialect().String() }

// Close closes both connection pools.
func (s *Store) Close() error {
	var rerr error
	if s.r != s.w {
		rerr = s.r.Close()
	}
	if err := errors.Join(rerr, s.w.Close()); err != nil {
		return fmt.Errorf("close store: %w", err)
	}
	return nil
}

// Ping checks that both the read pool and the write connection answer.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.r.PingContext(ctx); err != nil {
		return fmt.Errorf("ping store: read: %w", err)
	}
	if err := s.w.PingContext(ctx); err != nil {
		return fmt.Errorf("ping store: write: %w", err)
	}
	return nil
}

// tx runs fn in one immediate transaction on the write connection (on
// Postgres: a transaction holding the write lock, see postgres.go). fn must
// not call other Store methods that write: there is only one write
// connection (one write lock), so doing so would wait for itself.
func (s *Store) tx(ctx context.Context, fn func(*sql.Tx) error) error {
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	// Deferred so that a panic in fn (a caller's mutate) cannot leave the
	// only write connection inside an open transaction.
	defer func() { _ = tx.Rollback() }()
	if s.pg {
		if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock(?)`, int64(writeLockKey)); err != nil {
			return fmt.Errorf("take the write lock: %w", err)
		}
	}
	if err := fn(tx); err != nil {
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}

// timeLayout is RFC 3339 with a fixed nine-digit fraction: unlike
// time.RFC3339Nano it sorts correctly as text.
const timeLayout = "2006-01-02T15:04:05.000000000Z"

func fmtTime(t time.Time) string { return t.UTC().Format(timeLayout) }

func fmtTimePtr(t *time.Time) any {
	if t == nil {
		return nil
	}
	return fmtTime(*t)
}

func parseTime(s string) (time.Time, error) {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("parse stored time %q: %w", s, err)
	}
	return t.UTC(), nil
}

func parseTimePtr(s sql.NullString) (*time.Time, error) {
	if !s.Valid {
		return nil, nil
	}
	t, err := parseTime(s.String)
	if err != nil {
		return nil, err
	}
	return &t, nil
}

// orNow returns t, or the store's clock when t is zero.
func (s *Store) orNow(t time.Time) time.Time {
	if t.IsZero() {
		return s.now().UTC()
	}
	return t.UTC()
}

// isUnique reports whether err is a UNIQUE or PRIMARY KEY violation.
func isUnique(err error) bool {
	if pe, ok := pgErr(err); ok {
		return pe.Code == "23505"
	}
	var se *sqlite.Error
	if !errors.As(err, &se) {
		return false
	}
	return se.Code() == sqlite3.SQLITE_CONSTRAINT_UNIQUE || se.Code() == sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY
}

// uniqueOn reports whether err is a UNIQUE violation naming column
// ("sandboxes.name"); SQLite reports the columns only in the message.
func uniqueOn(err error, column string) bool {
	if pe, ok := pgErr(err); ok {
		return pgUniqueOn(pe, column)
	}
	var se *sqlite.Error
	return isUnique(err) && errors.As(err, &se) && strings.Contains(se.Error(), column)
}

type rowScanner interface {
	Scan(dest ...any) error
}
