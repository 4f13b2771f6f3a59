package store

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"
)

// The Postgres backend runs the very SQL the SQLite one does. Three things
// make that possible, all confined to this file:
//   - a database/sql connector wrapping pgx's that rebinds every `?`
//     placeholder to `$n` (outside quotes and comments), so store code and
//     the code of features added later keep writing `?`;
//   - pgMigration, which maps the few SQLite type names of the migrations to
//     their Postgres equivalents and keeps the `-- dialect:` sections of a
//     migration that belong to Postgres (see migrate.go);
//   - writeLock, an advisory lock every write transaction takes first, which
//     gives Postgres SQLite's one-writer-at-a-time semantics: the
//     read-check-write transactions (quotas, compare-and-set, IP leases,
//     the leader lease) stay correct across several managers.

// writeLockKey is the advisory lock (an arbitrary constant: "atelier" in
// ASCII) serialising write transactions across every manager of a database.
const writeLockKey = 0x61_74_65_6c_69_65_72

// openPostgres connects to the database at url and migrates it. The url is
// never logged nor put in an error: it may carry a password.
func openPostgres(ctx context.Context, url string) (*Store, error) {
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		// pgx's message may quote the URL; only say what is wrong with it.
		return nil, errors.New("open store: the database URL is not a valid PostgreSQL connection string")
	}
	db := sql.OpenDB(rebindConnector{stdlib.GetConnector(*cfg)})
	db.SetMaxOpenConns(16)
	db.SetMaxIdleConns(4)
	if err := db.PingContext(ctx); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("open store: connect to postgres %s/%s: %w", cfg.Host, cfg.Database, redact(err, cfg.Password))
	}
	if err := applyMigrations(ctx, db, mustMigrations(), dialectPostgres); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("open store: postgres %s/%s: %w", cfg.Host, cfg.Database, redact(err, cfg.Password))
	}
	return &Store{w: db, r: db, pg: true, pgcfg: cfg}, nil
}

// eventChannel is the NOTIFY channel AppendEvent signals on Postgres.
const eventChannel = "atelier_events"

// ListenEvents calls wake whenever a manager of this Postgres store commits
// an event (LISTEN/NOTIFY on a connection of its own), until ctx is done or
// the connection fails; it returns at once, nil, on SQLite, which has no
// other writers. A notification is only a hint to read the table: one
// missed while reconnecting costs latency, not an event.
func (s *Store) ListenEvents(ctx context.Context, wake func()) error {
	if !s.pg {
		return nil
	}
	c, err := pgx.ConnectConfig(ctx, s.pgcfg.Copy())
	if err != nil {
		return fmt.Errorf("listen for events: %w", redact(err, s.pgcfg.Password))
	}
	defer c.Close(context.WithoutCancel(ctx))
	if _, err := c.Exec(ctx, "LISTEN "+eventChannel); err != nil {
		return fmt.Errorf("listen for events: %w", err)
	}
	wake() // anything committed before LISTEN took effect
	for {
		if _, err := c.WaitForNotification(ctx); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("listen for events: %w", err)
		}
		wake()
	}
}

// redact strips a password from an error that might echo it.
type redactedError struct {
	msg string
	err error
}

func (e *redactedError) Error() string { return e.msg }
func (e *redactedError) Unwrap() error { return e.err }

func redact(err error, secret string) error {
	if err == nil || secret == "" || !strings.Contains(err.Error(), secret) {
		return err
	}
	return &redactedError{msg: strings.ReplaceAll(err.Error(), secret, "xxxxx"), err: err}
}

type dialect int

const (
	dialectSQLite dialect = iota
	dialectPostgres
)

func (d dialect) String() string {
	if d == dialectPostgres {
		return "postgres"
	}
	return "sqlite"
}

// rebind turns `?` placeholders into `$1`, `$2`...; a `?` inside a string
// literal, a quoted identifier or a comment is left alone.
func rebind(q string) string {
	if !strings.Contains(q, "?") {
		return q
	}
	var b strings.Builder
	b.Grow(len(q) + 8)
	n := 0
	for i := 0; i < len(q); i++ {
		c := q[i]
		switch {
		case c == '\'' || c == '"':
			j := i + 1
			for j < len(q) {
				if q[j] == c {
					if j+1 < len(q) && q[j+1] == c { // doubled quote
						j += 2
						continue
					}
					break
				}
				j++
			}
			b.WriteString(q[i:min(j+1, len(q))])
			i = j
		case c == '-' && i+1 < len(q) && q[i+1] == '-':
			j := strings.IndexByte(q[i:], '\n')
			if j < 0 {
				j = len(q) - i
			}
			b.WriteString(q[i : i+j])
			i += j - 1
		case c == '?':
			n++
			b.WriteByte('$')
			b.WriteString(strconv.Itoa(n))
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

type rebindConnector struct{ driver.Connector }

func (c rebindConnector) Connect(ctx context.Context) (driver.Conn, error) {
	conn, err := c.Connector.Connect(ctx)
	if err != nil {
		return nil, err
	}
	return &rebindConn{conn.(*stdlib.Conn)}, nil
}

// rebindConn is pgx's connection with every query rebound. It forwards the
// optional interfaces database/sql looks for.
type rebindConn struct{ c *stdlib.Conn }

func (r *rebindConn) Prepare(q string) (driver.Stmt, error) { return r.c.Prepare(rebind(q)) }
func (r *rebindConn) PrepareContext(ctx context.Context, q string) (driver.Stmt, error) {
	return r.c.PrepareContext(ctx, rebind(q))
}
func (r *rebindConn) Close() error              { return r.c.Close() }
func (r *rebindConn) Begin() (driver.Tx, error) { return r.c.Begin() } //nolint:staticcheck // required by driver.Conn
func (r *rebindConn) BeginTx(ctx context.Context, o driver.TxOptions) (driver.Tx, error) {
	return r.c.BeginTx(ctx, o)
}
func (r *rebindConn) ExecContext(ctx context.Context, q string, args []driver.NamedValue) (driver.Result, error) {
	return r.c.ExecContext(ctx, rebind(q), args)
}
func (r *rebindConn) QueryContext(ctx context.Context, q string, args []driver.NamedValue) (driver.Rows, error) {
	return r.c.QueryContext(ctx, rebind(q), args)
}
func (r *rebindConn) Ping(ctx context.Context) error             { return r.c.Ping(ctx) }
func (r *rebindConn) CheckNamedValue(v *driver.NamedValue) error { return r.c.CheckNamedValue(v) }
func (r *rebindConn) ResetSession(ctx context.Context) error     { return r.c.ResetSession(ctx) }
func (r *rebindConn) Raw() *stdlib.Conn                          { return r.c }
func (r *rebindConn) IsValid() bool                              { return !r.c.Conn().IsClosed() }

var (
	_ driver.ConnPrepareContext = (*rebindConn)(nil)
	_ driver.ExecerContext      = (*rebindConn)(nil)
	_ driver.QueryerContext     = (*rebindConn)(nil)
	_ driver.ConnBeginTx        = (*rebindConn)(nil)
	_ driver.Pinger             = (*rebindConn)(nil)
	_ driver.NamedValueChecker  = (*rebindConn)(nil)
	_ driver.SessionResetter    = (*rebindConn)(nil)
	_ driver.Validator          = (*rebindConn)(nil)
)

// pgTypes maps the SQLite column types the migrations use. TEXT gets the
// "C" collation so that ORDER BY and comparisons are bytewise, as in
// SQLite, whatever the database's default collation.
var pgTypes = []struct {
	re   *regexp.Regexp
	repl string
}{
	{regexp.MustCompile(`\bINTEGER PRIMARY KEY AUTOINCREMENT\b`), `BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY`},
	{regexp.MustCompile(`\bINTEGER\b`), `BIGINT`},
	{regexp.MustCompile(`\bBLOB\b`), `BYTEA`},
	{regexp.MustCompile(`\bTEXT\b`), `TEXT COLLATE "C"`},
}

// dialectMarker starts a section of a migration meant for one backend (or
// `all`): `-- dialect: sqlite`, `-- dialect: postgres`, `-- dialect: all`.
var dialectMarker = regexp.MustCompile(`(?m)^--\s*dialect:\s*(\w+)\s*$`)

// forDialect keeps the parts of a migration meant for d. The type mapping
// applies only to the Postgres text, and never inside comments or quotes:
// it is a mapping of the type names, which the migrations write in capitals.
func forDialect(sqlText string, d dialect) (string, error) {
	locs := dialectMarker.FindAllStringSubmatchIndex(sqlText, -1)
	var b strings.Builder
	cur, prev := "all", 0
	keep := func(end int) {
		if cur == "all" || cur == d.String() {
			b.WriteString(sqlText[prev:end])
		}
	}
	for _, l := range locs {
		keep(l[0])
		cur = sqlText[l[2]:l[3]]
		switch cur {
		case "all", "sqlite", "postgres":
		default:
			return "", fmt.Errorf("unknown dialect %q (want sqlite, postgres or all)", cur)
		}
		prev = l[1]
	}
	keep(len(sqlText))
	out := b.String()
	if d != dialectPostgres {
		return out, nil
	}
	return mapOutsideQuotes(stripComments(out), func(s string) string {
		for _, t := range pgTypes {
			s = t.re.ReplaceAllString(s, t.repl)
		}
		return s
	}), nil
}

// stripComments removes `--` comments that are not inside quotes.
func stripComments(q string) string {
	var b strings.Builder
	inQ := byte(0)
	for i := 0; i < len(q); i++ {
		c := q[i]
		switch {
		case inQ != 0:
			if c == inQ {
				inQ = 0
			}
		case c == '\'' || c == '"':
			inQ = c
		case c == '-' && i+1 < len(q) && q[i+1] == '-':
			for i < len(q) && q[i] != '\n' {
				i++
			}
			if i < len(q) {
				b.WriteByte('\n')
			}
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}

// mapOutsideQuotes applies f to the parts of q outside quotes.
func mapOutsideQuotes(q string, f func(string) string) string {
	var b strings.Builder
	start := 0
	for i := 0; i < len(q); i++ {
		c := q[i]
		if c != '\'' && c != '"' {
			continue
		}
		b.WriteString(f(q[start:i]))
		j := strings.IndexByte(q[i+1:], c)
		if j < 0 {
			b.WriteString(q[i:])
			return b.String()
		}
		b.WriteString(q[i : i+j+2])
		i += j + 1
		start = i + 1
	}
	if start < len(q) {
		b.WriteString(f(q[start:]))
	}
	return b.String()
}

func mustMigrations() []migration {
	ms, err := loadMigrations(migrationFS)
	if err != nil {
		panic(err) // embedded files: caught by TestEmbeddedMigrationsAreContiguous
	}
	return ms
}

func pgErr(err error) (*pgconn.PgError, bool) {
	var pe *pgconn.PgError
	return pe, errors.As(err, &pe)
}

// pgUniqueOn reports whether err is a Postgres unique violation on
// table.column ("sandboxes.name"). The detail reads
// `Key (owner_id, name)=(u1, box) already exists.`
func pgUniqueOn(pe *pgconn.PgError, column string) bool {
	table, col, _ := strings.Cut(column, ".")
	if pe.Code != "23505" || pe.TableName != table {
		return false
	}
	cols, _, _ := strings.Cut(strings.TrimPrefix(pe.Detail, "Key ("), ")=")
	for c := range strings.SplitSeq(cols, ",") {
		if strings.TrimSpace(c) == col {
			return true
		}
	}
	return false
}
