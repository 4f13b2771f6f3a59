package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// Route kinds: the sandbox's own services and its exposed dev commands.
const (
	RouteVSCode   = "vscode"
	RouteOpenCode = "opencode"
	RouteBrowser  = "browser"
	RouteDev      = "dev"
)

// ServiceRouteKinds are the routes every sandbox has once it has run.
var ServiceRouteKinds = []string{RouteVSCode, RouteOpenCode, RouteBrowser}

// Route is one host of the HTTP edge: requests for Host go to Port on the
// sandbox's guest address.
type Route struct {
	Host      string    `json:"host"`
	SandboxID string    `json:"sandboxId"`
	Kind      string    `json:"kind"`
	Name      string    `json:"name,omitempty"`
	Alias     string    `json:"alias,omitempty"`
	Port      int       `json:"port"`
	Public    bool      `json:"public"`
	CreatedAt time.Time `json:"createdAt"`
}

// EdgeCode is a pending one-time code of the edge login handshake. Hash is
// the SHA-256 of the code; the code itself is never stored.
type EdgeCode struct {
	Hash      []byte
	Host      string
	UserID    string
	SessionID string
	Next      string
	ExpiresAt time.Time
}

const routeCols = `host, sandbox_id, kind, name, alias, port, public, created_at`

func scanRoute(r rowScanner) (Route, error) {
	var (
		rt  Route
		pub int
		cAt string
	)
	if err := r.Scan(&rt.Host, &rt.SandboxID, &rt.Kind, &rt.Name, &rt.Alias, &rt.Port, &pub, &cAt); err != nil {
		return Route{}, err
	}
	rt.Public = pub != 0
	t, err := parseTime(cAt)
	if err != nil {
		return Route{}, err
	}
	rt.CreatedAt = t
	return rt, nil
}

// DevRouteLimits cap the dev hosts of one sandbox and of all the sandboxes
// of its owner; 0 is no cap.
type DevRouteLimits struct {
	PerSandbox int
	PerUser    int
}

// Scopes of a DevRouteQuotaError.
const (
	QuotaSandbox = "sandbox"
	QuotaUser    = "user"
)

// DevRouteQuotaError is a dev-host cap that a change would exceed.
type DevRouteQuotaError struct {
	// Scope is QuotaSandbox or QuotaUser.
	Scope string
	Limit int
	// Held is what the scope holds now; Wanted what it would hold.
	Held, Wanted int
}

func (e *DevRouteQuotaError) Error() string {
	return fmt.Sprintf("dev host limit per %s reached: %d of %d held, this change needs %d", e.Scope, e.Held, e.Limit, e.Wanted)
}

// ReplaceRoutes atomically replaces the routes of sandboxID whose kind is in
// kinds and whose name is name with routes (nil removes them). A host held
// by any other route is ErrDuplicate and changes nothing.
func (s *Store) ReplaceRoutes(ctx context.Context, sandboxID, name string, kinds []string, routes []Route) error {
	return s.replaceRoutes(ctx, sandboxID, name, kinds, routes, DevRouteLimits{})
}

// ReplaceDevRoutes is ReplaceRoutes for the hosts of dev command name, in
// the same transaction as a check of lim: a change that leaves the sandbox,
// or its owner, with more dev hosts than lim allows and than before is a
// *DevRouteQuotaError and changes nothing. Shrinking is always allowed, so a
// lowered limit never blocks an unexpose.
func (s *Store) ReplaceDevRoutes(ctx context.Context, sandboxID, name string, routes []Route, lim DevRouteLimits) error {
	return s.replaceRoutes(ctx, sandboxID, name, []string{RouteDev}, routes, lim)
}

// devQuota checks one scope of DevRouteLimits inside a transaction, before
// the command's old routes are deleted: held counts every dev host of the
// scope, mine those of the command being replaced.
func devQuota(ctx context.Context, tx *sql.Tx, scope string, limit, adding int, q string, args ...any) error {
	if limit <= 0 {
		return nil
	}
	var held, mine int
	if err := tx.QueryRowContext(ctx, q, args...).Scan(&held, &mine); err != nil {
		return fmt.Errorf("count dev hosts per %s: %w", scope, err)
	}
	wanted := held - mine + adding
	if wanted > limit && wanted > held {
		return &DevRouteQuotaError{Scope: scope, Limit: limit, Held: held, Wanted: wanted}
	}
	return nil
}

func (s *Store) replaceRoutes(ctx context.Context, sandboxID, name string, kinds []string, routes []Route, lim DevRouteLimits) error {
	if sandboxID == "" || len(kinds) == 0 {
		return errors.New("replace routes: empty sandbox id or kinds")
	}
	for _, r := range routes {
		if r.SandboxID != sandboxID || r.Name != name || !slices.Contains(kinds, r.Kind) || r.Host == "" {
			return fmt.Errorf("replace routes of %s: route %q (%s %s) outside the replaced set", sandboxID, r.Host, r.Kind, r.Name)
		}
	}
	now := fmtTime(s.orNow(time.Time{}))
	err := s.tx(ctx, func(tx *sql.Tx) error {
		if len(routes) > 0 {
			// The user's count joins on the owner: its sandboxes are listed
			// by sandboxes_owner_id, their routes by routes_sandbox_id.
			if err := devQuota(ctx, tx, QuotaSandbox, lim.PerSandbox, len(routes),
				`SELECT COUNT(*), COUNT(*) FILTER (WHERE name = ?) FROM routes WHERE sandbox_id = ? AND kind = 'dev'`,
				name, sandboxID); err != nil {
				return err
			}
			if err := devQuota(ctx, tx, QuotaUser, lim.PerUser, len(routes),
				`SELECT COUNT(*), COUNT(*) FILTER (WHERE r.sandbox_id = ? AND r.name = ?) FROM routes r JOIN sandboxes s ON s.id = r.sandbox_id
				 WHERE r.kind = 'dev' AND s.owner_id = (SELECT owner_id FROM sandboxes WHERE id = ?)`,
				sandboxID, name, sandboxID); err != nil {
				return err
			}
		}
		args := append([]any{sandboxID, name}, routeKindArgs(kinds)...)
		if _, err := tx.ExecContext(ctx, `DELETE FROM routes WHERE sandbox_id = ? AND name = ? AND kind IN `+inList(len(kinds)), args...); err != nil {
			return err
		}
		for _, r := range routes {
			_, err := tx.ExecContext(ctx, `INSERT INTO routes (`+routeCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
				r.Host, r.SandboxID, r.Kind, r.Name, r.Alias, r.Port, routeBool(r.Public), now)
			if isUnique(err) {
				return fmt.Errorf("host %s: %w", r.Host, ErrDuplicate)
			}
			if isForeignKey(err) {
				return fmt.Errorf("sandbox %s: %w", sandboxID, ErrNotFound)
			}
			if err != nil {
				return fmt.Errorf("host %s: %w", r.Host, err)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("replace routes of %s: %w", sandboxID, err)
	}
	return nil
}

// DeleteRoutes removes every route of a sandbox; none is success.
func (s *Store) DeleteRoutes(ctx context.Context, sandboxID string) error {
	if _, err := s.w.ExecContext(ctx, `DELETE FROM routes WHERE sandbox_id = ?`, sandboxID); err != nil {
		return fmt.Errorf("delete routes of %s: %w", sandboxID, err)
	}
	return nil
}

// ListRoutes returns the routes of one sandbox, or of all when sandboxID is
// empty, ordered by sandbox and host.
func (s *Store) ListRoutes(ctx context.Context, sandboxID string) ([]Route, error) {
	q := `SELECT ` + routeCols + ` FROM routes`
	var args []any
	if sandboxID != "" {
		q += ` WHERE sandbox_id = ?`
		args = append(args, sandboxID)
	}
	rows, err := s.r.QueryContext(ctx, q+` ORDER BY sandbox_id, host`, args...)
	if err != nil {
		return nil, fmt.Errorf("list routes: %w", err)
	}
	defer rows.Close()
	var out []Route
	for rows.Next() {
		r, err := scanRoute(rows)
		if err != nil {
			return nil, fmt.Errorf("list routes: %w", err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list routes: %w", err)
	}
	return out, nil
}

// PutEdgeCode records a one-time code of the edge login handshake.
func (s *Store) PutEdgeCode(ctx context.Context, c EdgeCode) error {
	if len(c.Hash) == 0 || c.Host == "" || c.UserID == "" {
		return errors.New("put edge code: empty hash, host or user")
	}
	_, err := s.w.ExecContext(ctx, `INSERT INTO edge_codes (hash, host, user_id, session_id, next, expires_at)
		VALUES (?, ?, ?, ?, ?, ?)`, c.Hash, strings.ToLower(c.Host), c.UserID, c.SessionID, c.Next, fmtTime(c.ExpiresAt))
	switch {
	case isUnique(err):
		return fmt.Errorf("put edge code: %w", ErrDuplicate)
	case err != nil:
		return fmt.Errorf("put edge code: %w", err)
	}
	return nil
}

// TakeEdgeCode consumes a code: it is deleted whatever the outcome, so a
// code works at most once. Missing or expired codes are ErrNotFound; other
// expired codes are swept in the same transaction.
func (s *Store) TakeEdgeCode(ctx context.Context, hash []byte, now time.Time) (EdgeCode, error) {
	var (
		out EdgeCode
		eAt string
	)
	err := s.tx(ctx, func(tx *sql.Tx) error {
		err := tx.QueryRowContext(ctx, `DELETE FROM edge_codes WHERE hash = ?
			RETURNING hash, host, user_id, session_id, next, expires_at`, hash).
			Scan(&out.Hash, &out.Host, &out.UserID, &out.SessionID, &out.Next, &eAt)
		if errors.Is(err, sql.ErrNoRows) {
			return ErrNotFound
		}
		if err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, `DELETE FROM edge_codes WHERE expires_at <= ?`, fmtTime(now))
		return err
	})
	if err != nil {
		return EdgeCode{}, fmt.Errorf("take edge code: %w", err)
	}
	if out.ExpiresAt, err = parseTime(eAt); err != nil {
		return EdgeCode{}, fmt.Errorf("take edge code: %w", err)
	}
	if !now.Before(out.ExpiresAt) {
		return EdgeCode{}, fmt.Errorf("take edge code: expired: %w", ErrNotFound)
	}
	return out, nil
}

func isForeignKey(err error) bool {
	if pe, ok := pgErr(err); ok {
		return pe.Code == "23503"
	}
	var se *sqlite.Error
	return errors.As(err, &se) && se.Code() == sqlite3.SQLITE_CONSTRAINT_FOREIGNKEY
}

func routeKindArgs(ss []string) []any {
	out := make([]any, len(ss))
	for i, s := range ss {
		out[i] = s
	}
	return out
}

func routeBool(b bool) int {
	if b {
		return 1
	}
	return 0
}
