package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"atelier/internal/ids"
)

// userIDLen matches sandbox ids: short enough for logs, 62 bits of entropy.
const userIDLen = 12

const userCols = `id, github_id, login, name, avatar_url, created_at, updated_at`

func scanUser(r rowScanner) (User, error) {
	var (
		u          User
		gh         sql.NullInt64
		cAt, uAt   string
		name, avat string
	)
	if err := r.Scan(&u.ID, &gh, &u.Login, &name, &avat, &cAt, &uAt); err != nil {
		return User{}, err
	}
	u.GitHubID, u.Name, u.AvatarURL = gh.Int64, name, avat
	var err error
	if u.CreatedAt, err = parseTime(cAt); err != nil {
		return User{}, err
	}
	if u.UpdatedAt, err = parseTime(uAt); err != nil {
		return User{}, err
	}
	return u, nil
}

// UpsertGitHubUser inserts or refreshes the user with u.GitHubID. On first
// insert the ID is u.ID, or a fresh one when empty; later calls keep the
// stored ID and CreatedAt and update login, name and avatar.
func (s *Store) UpsertGitHubUser(ctx context.Context, u User) (User, error) {
	if u.GitHubID == 0 {
		return User{}, errors.New("upsert github user: missing github id")
	}
	if u.ID == "" {
		u.ID = ids.New(userIDLen)
	}
	now := s.now()
	u.CreatedAt = s.orNow(u.CreatedAt)
	u.UpdatedAt = now.UTC()
	row := s.w.QueryRowContext(ctx, `INSERT INTO users (`+userCols+`) VALUES (?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (github_id) DO UPDATE SET
			login = excluded.login, name = excluded.name,
			avatar_url = excluded.avatar_url, updated_at = excluded.updated_at
		RETURNING `+userCols,
		u.ID, u.GitHubID, u.Login, u.Name, u.AvatarURL, fmtTime(u.CreatedAt), fmtTime(u.UpdatedAt))
	out, err := scanUser(row)
	if err != nil {
		if isUnique(err) {
			return User{}, fmt.Errorf("upsert github user %d: id %s: %w", u.GitHubID, u.ID, ErrDuplicate)
		}
		return User{}, fmt.Errorf("upsert github user %d: %w", u.GitHubID, err)
	}
	return out, nil
}

// EnsureUser inserts u when no user has u.ID and returns the stored row
// either way; an existing row is not modified.
func (s *Store) EnsureUser(ctx context.Context, u User) (User, error) {
	if u.ID == "" {
		return User{}, errors.New("ensure user: missing id")
	}
	u.CreatedAt = s.orNow(u.CreatedAt)
	u.UpdatedAt = s.orNow(u.UpdatedAt)
	var gh any
	if u.GitHubID != 0 {
		gh = u.GitHubID
	}
	var out User
	err := s.tx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `INSERT INTO users (`+userCols+`) VALUES (?, ?, ?, ?, ?, ?, ?)
			ON CONFLICT (id) DO NOTHING`,
			u.ID, gh, u.Login, u.Name, u.AvatarURL, fmtTime(u.CreatedAt), fmtTime(u.UpdatedAt)); err != nil {
			return err
		}
		var err error
		out, err = scanUser(tx.QueryRowContext(ctx, `SELECT `+userCols+` FROM users WHERE id = ?`, u.ID))
		return err
	})
	if err != nil {
		if isUnique(err) {
			return User{}, fmt.Errorf("ensure user %s: github id %d: %w", u.ID, u.GitHubID, ErrDuplicate)
		}
		return User{}, fmt.Errorf("ensure user %s: %w", u.ID, err)
	}
	return out, nil
}

// GetUser returns the user with id, or ErrNotFound.
func (s *Store) GetUser(ctx context.Context, id string) (User, error) {
	u, err := scanUser(s.r.QueryRowContext(ctx, `SELECT `+userCols+` FROM users WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return User{}, fmt.Errorf("get user %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return User{}, fmt.Errorf("get user %s: %w", id, err)
	}
	return u, nil
}

// CreateSession stores a new session. CreatedAt defaults to now.
func (s *Store) CreateSession(ctx context.Context, sess Session) error {
	if sess.ID == "" || sess.UserID == "" {
		return errors.New("create session: missing id or user id")
	}
	_, err := s.w.ExecContext(ctx, `INSERT INTO sessions (id, user_id, created_at, expires_at, revoked_at)
		VALUES (?, ?, ?, ?, ?)`,
		sess.ID, sess.UserID, fmtTime(s.orNow(sess.CreatedAt)), fmtTime(sess.ExpiresAt), fmtTimePtr(sess.RevokedAt))
	switch {
	case isUnique(err):
		return fmt.Errorf("create session: %w", ErrDuplicate)
	case err != nil:
		return fmt.Errorf("create session for user %s: %w", sess.UserID, err)
	}
	return nil
}

// GetSession returns the session with id, including revoked or expired
// ones: the caller decides with Session.Valid.
func (s *Store) GetSession(ctx context.Context, id string) (Session, error) {
	var (
		sess     Session
		cAt, eAt string
		rAt      sql.NullString
	)
	err := s.r.QueryRowContext(ctx, `SELECT id, user_id, created_at, expires_at, revoked_at
		FROM sessions WHERE id = ?`, id).Scan(&sess.ID, &sess.UserID, &cAt, &eAt, &rAt)
	if errors.Is(err, sql.ErrNoRows) {
		return Session{}, fmt.Errorf("get session: %w", ErrNotFound)
	}
	if err != nil {
		return Session{}, fmt.Errorf("get session: %w", err)
	}
	if sess.CreatedAt, err = parseTime(cAt); err != nil {
		return Session{}, fmt.Errorf("get session: %w", err)
	}
	if sess.ExpiresAt, err = parseTime(eAt); err != nil {
		return Session{}, fmt.Errorf("get session: %w", err)
	}
	if sess.RevokedAt, err = parseTimePtr(rAt); err != nil {
		return Session{}, fmt.Errorf("get session: %w", err)
	}
	return sess, nil
}

// RevokeSession marks the session revoked at now. Revoking an already
// revoked session succeeds and keeps the first revocation time; an unknown
// id is ErrNotFound.
func (s *Store) RevokeSession(ctx context.Context, id string, now time.Time) error {
	res, err := s.w.ExecContext(ctx, `UPDATE sessions SET revoked_at = coalesce(revoked_at, ?) WHERE id = ?`,
		fmtTime(now), id)
	if err != nil {
		return fmt.Errorf("revoke session: %w", err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("revoke session: %w", ErrNotFound)
	}
	return nil
}

// DeleteExpiredSessions removes sessions whose expiry is at or before now
// and returns how many were removed.
func (s *Store) DeleteExpiredSessions(ctx context.Context, now time.Time) (int64, error) {
	return s.execCount(ctx, "delete expired sessions", `DELETE FROM sessions WHERE expires_at <= ?`, fmtTime(now))
}

// RevokeUserSessions revokes every live session of userID at now and
// returns how many it revoked.
func (s *Store) RevokeUserSessions(ctx context.Context, userID string, now time.Time) (int64, error) {
	n := fmtTime(now)
	return s.execCount(ctx, "revoke sessions of user "+userID,
		`UPDATE sessions SET revoked_at = ? WHERE user_id = ? AND revoked_at IS NULL AND expires_at > ?`, n, userID, n)
}

// UsersWithSessions lists the users holding a live (unrevoked, unexpired)
// session at now, so a periodic pass can end those no longer allowed in.
func (s *Store) UsersWithSessions(ctx context.Context, now time.Time) ([]User, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT `+userCols+` FROM users WHERE id IN (
		SELECT user_id FROM sessions WHERE revoked_at IS NULL AND expires_at > ?) ORDER BY id`, fmtTime(now))
	if err != nil {
		return nil, fmt.Errorf("users with sessions: %w", err)
	}
	defer rows.Close()
	var out []User
	for rows.Next() {
		u, err := scanUser(rows)
		if err != nil {
			return nil, fmt.Errorf("users with sessions: %w", err)
		}
		out = append(out, u)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("users with sessions: %w", err)
	}
	return out, nil
}

// GitHubGrant is what Atelier keeps to re-verify a user's org membership:
// their OAuth token, sealed by the caller (the store never sees it in the
// clear), and the last confirmed membership.
type GitHubGrant struct {
	SealedToken   []byte
	Org           string     // "" when no membership is on record
	OrgVerifiedAt *time.Time // when Org's membership was last confirmed active
}

// GetGitHubGrant returns userID's grant; ErrNotFound for an unknown user.
func (s *Store) GetGitHubGrant(ctx context.Context, userID string) (GitHubGrant, error) {
	var (
		g   GitHubGrant
		vAt sql.NullString
	)
	err := s.r.QueryRowContext(ctx, `SELECT github_token, org_verified, org_verified_at FROM users WHERE id = ?`, userID).
		Scan(&g.SealedToken, &g.Org, &vAt)
	if errors.Is(err, sql.ErrNoRows) {
		return GitHubGrant{}, fmt.Errorf("get github grant of %s: %w", userID, ErrNotFound)
	}
	if err != nil {
		return GitHubGrant{}, fmt.Errorf("get github grant of %s: %w", userID, err)
	}
	if g.OrgVerifiedAt, err = parseTimePtr(vAt); err != nil {
		return GitHubGrant{}, fmt.Errorf("get github grant of %s: %w", userID, err)
	}
	return g, nil
}

// PutGitHubGrant replaces userID's grant (a nil token forgets it).
func (s *Store) PutGitHubGrant(ctx context.Context, userID string, g GitHubGrant) error {
	var tok any
	if len(g.SealedToken) > 0 {
		tok = g.SealedToken
	}
	res, err := s.w.ExecContext(ctx, `UPDATE users SET github_token = ?, org_verified = ?, org_verified_at = ? WHERE id = ?`,
		tok, g.Org, fmtTimePtr(g.OrgVerifiedAt), userID)
	if err != nil {
		return fmt.Errorf("put github grant of %s: %w", userID, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("put github grant of %s: %w", userID, ErrNotFound)
	}
	return nil
}

// SetOrgVerified records the outcome of a membership check: org confirmed
// active at at, or (org "", at nil) no membership on record.
func (s *Store) SetOrgVerified(ctx context.Context, userID, org string, at *time.Time) error {
	res, err := s.w.ExecContext(ctx, `UPDATE users SET org_verified = ?, org_verified_at = ? WHERE id = ?`,
		org, fmtTimePtr(at), userID)
	if err != nil {
		return fmt.Errorf("set org verified of %s: %w", userID, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("set org verified of %s: %w", userID, ErrNotFound)
	}
	return nil
}

// PutOAuthState records a pending OAuth login. Expired states are deleted
// in the same transaction; when limit > 0 and that many unexpired states are
// pending already, nothing is stored and the error is ErrLimit, so logins
// nobody completes cannot grow the database without bound.
func (s *Store) PutOAuthState(ctx context.Context, st OAuthState, now time.Time, limit int) error {
	if st.State == "" {
		return errors.New("put oauth state: empty state")
	}
	err := s.tx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `DELETE FROM oauth_states WHERE expires_at <= ?`, fmtTime(now)); err != nil {
			return err
		}
		if limit > 0 {
			var n int
			if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM oauth_states`).Scan(&n); err != nil {
				return err
			}
			if n >= limit {
				return fmt.Errorf("%d logins pending: %w", n, ErrLimit)
			}
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO oauth_states (state, verifier, return_to, expires_at)
			VALUES (?, ?, ?, ?)`, st.State, st.Verifier, st.ReturnTo, fmtTime(st.ExpiresAt))
		return err
	})
	switch {
	case isUnique(err):
		return fmt.Errorf("put oauth state: %w", ErrDuplicate)
	case err != nil:
		return fmt.Errorf("put oauth state: %w", err)
	}
	return nil
}

// CountOAuthStates counts the pending logins, expired ones included.
func (s *Store) CountOAuthStates(ctx context.Context) (int, error) {
	var n int
	if err := s.r.QueryRowContext(ctx, `SELECT count(*) FROM oauth_states`).Scan(&n); err != nil {
		return 0, fmt.Errorf("count oauth states: %w", err)
	}
	return n, nil
}

// DeleteExpiredOAuthStates removes login states whose expiry is at or before
// now and returns how many were removed.
func (s *Store) DeleteExpiredOAuthStates(ctx context.Context, now time.Time) (int64, error) {
	return s.execCount(ctx, "delete expired oauth states", `DELETE FROM oauth_states WHERE expires_at <= ?`, fmtTime(now))
}

// DeleteExpiredEdgeCodes removes edge login codes whose expiry is at or
// before now and returns how many were removed.
func (s *Store) DeleteExpiredEdgeCodes(ctx context.Context, now time.Time) (int64, error) {
	return s.execCount(ctx, "delete expired edge codes", `DELETE FROM edge_codes WHERE expires_at <= ?`, fmtTime(now))
}

// DeleteDeadAPITokens removes tokens that expired or were revoked at or
// before cutoff; listings keep showing recently dead ones until then.
func (s *Store) DeleteDeadAPITokens(ctx context.Context, cutoff time.Time) (int64, error) {
	c := fmtTime(cutoff)
	return s.execCount(ctx, "delete dead api tokens",
		`DELETE FROM api_tokens WHERE expires_at <= ? OR revoked_at <= ?`, c, c)
}

func (s *Store) execCount(ctx context.Context, what, query string, args ...any) (int64, error) {
	res, err := s.w.ExecContext(ctx, query, args...)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", what, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return 0, fmt.Errorf("%s: %w", what, err)
	}
	return n, nil
}

// TakeOAuthState consumes a state: it is deleted whatever the outcome, so a
// state can be used at most once. Missing or expired states are
// ErrNotFound. Other expired states are swept in the same transaction so
// abandoned logins do not accumulate.
func (s *Store) TakeOAuthState(ctx context.Context, state string, now time.Time) (OAuthState, error) {
	var (
		out OAuthState
		eAt string
	)
	nowS := fmtTime(now)
	err := s.tx(ctx, func(tx *sql.Tx) error {
		err := tx.QueryRowContext(ctx, `DELETE FROM oauth_states WHERE state = ?
			RETURNING state, verifier, return_to, expires_at`, state).
			Scan(&out.State, &out.Verifier, &out.ReturnTo, &eAt)
		if errors.Is(err, sql.ErrNoRows) {
			return ErrNotFound
		}
		if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM oauth_states WHERE expires_at <= ?`, nowS); err != nil {
			return err
		}
		return nil
	})
	if err != nil {
		return OAuthState{}, fmt.Errorf("take oauth state: %w", err)
	}
	if out.ExpiresAt, err = parseTime(eAt); err != nil {
		return OAuthState{}, fmt.Errorf("take oauth state: %w", err)
	}
	if !now.Before(out.ExpiresAt) {
		return OAuthState{}, fmt.Errorf("take oauth state: expired: %w", ErrNotFound)
	}
	return out, nil
}

const tokenCols = `id, user_id, name, prefix, hash, created_at, last_used_at, expires_at, revoked_at, scope`

func scanToken(r rowScanner) (APIToken, error) {
	var (
		t             APIToken
		cAt           string
		lAt, eAt, rAt sql.NullString
	)
	if err := r.Scan(&t.ID, &t.UserID, &t.Name, &t.Prefix, &t.Hash, &cAt, &lAt, &eAt, &rAt, &t.Scope); err != nil {
		return APIToken{}, err
	}
	var err error
	if t.CreatedAt, err = parseTime(cAt); err != nil {
		return APIToken{}, err
	}
	if t.LastUsedAt, err = parseTimePtr(lAt); err != nil {
		return APIToken{}, err
	}
	if t.ExpiresAt, err = parseTimePtr(eAt); err != nil {
		return APIToken{}, err
	}
	if t.RevokedAt, err = parseTimePtr(rAt); err != nil {
		return APIToken{}, err
	}
	return t, nil
}

// CreateAPIToken stores a token. Hash is the SHA-256 of the secret; the
// secret itself is never stored. CreatedAt defaults to now.
func (s *Store) CreateAPIToken(ctx context.Context, t APIToken) error {
	if t.ID == "" || t.UserID == "" || len(t.Hash) == 0 {
		return errors.New("create api token: missing id, user id or hash")
	}
	if t.Scope == "" {
		t.Scope = "full"
	}
	_, err := s.w.ExecContext(ctx, `INSERT INTO api_tokens (`+tokenCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		t.ID, t.UserID, t.Name, t.Prefix, t.Hash, fmtTime(s.orNow(t.CreatedAt)),
		fmtTimePtr(t.LastUsedAt), fmtTimePtr(t.ExpiresAt), fmtTimePtr(t.RevokedAt), t.Scope)
	switch {
	case isUnique(err):
		return fmt.Errorf("create api token: %w", ErrDuplicate)
	case err != nil:
		return fmt.Errorf("create api token for user %s: %w", t.UserID, err)
	}
	return nil
}

// ListAPITokens returns the user's tokens, revoked and expired ones
// included, oldest first.
func (s *Store) ListAPITokens(ctx context.Context, userID string) ([]APIToken, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT `+tokenCols+` FROM api_tokens WHERE user_id = ?
		ORDER BY created_at, id`, userID)
	if err != nil {
		return nil, fmt.Errorf("list api tokens: %w", err)
	}
	defer rows.Close()
	out := []APIToken{}
	for rows.Next() {
		t, err := scanToken(rows)
		if err != nil {
			return nil, fmt.Errorf("list api tokens: %w", err)
		}
		out = append(out, t)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list api tokens: %w", err)
	}
	return out, nil
}

// RevokeAPIToken revokes the user's token id at now. ErrNotFound when the
// token does not exist or belongs to someone else; revoking twice succeeds.
func (s *Store) RevokeAPIToken(ctx context.Context, userID, id string, now time.Time) error {
	res, err := s.w.ExecContext(ctx, `UPDATE api_tokens SET revoked_at = coalesce(revoked_at, ?)
		WHERE id = ? AND user_id = ?`, fmtTime(now), id, userID)
	if err != nil {
		return fmt.Errorf("revoke api token %s: %w", id, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("revoke api token %s: %w", id, ErrNotFound)
	}
	return nil
}

// LookupAPIToken finds a usable token by hash: unknown, revoked and expired
// tokens are all ErrNotFound so callers cannot tell them apart by accident.
func (s *Store) LookupAPIToken(ctx context.Context, hash []byte, now time.Time) (APIToken, error) {
	t, err := scanToken(s.r.QueryRowContext(ctx, `SELECT `+tokenCols+` FROM api_tokens
		WHERE hash = ? AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > ?)`,
		hash, fmtTime(now)))
	if errors.Is(err, sql.ErrNoRows) {
		return APIToken{}, fmt.Errorf("lookup api token: %w", ErrNotFound)
	}
	if err != nil {
		return APIToken{}, fmt.Errorf("lookup api token: %w", err)
	}
	return t, nil
}

// TouchAPIToken records that the token was used at now.
func (s *Store) TouchAPIToken(ctx context.Context, id string, now time.Time) error {
	res, err := s.w.ExecContext(ctx, `UPDATE api_tokens SET last_used_at = ? WHERE id = ?`, fmtTime(now), id)
	if err != nil {
		return fmt.Errorf("touch api token %s: %w", id, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("touch api token %s: %w", id, ErrNotFound)
	}
	return nil
}
