package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"atelier/internal/ids"
)

// GitSource is where a user's repositories live and the token that reads
// them. Token is sealed (package secretbox); the store keeps it opaque and
// never returns it through the API's views.
type GitSource struct {
	ID        string
	OwnerID   string
	Type      string // generic or github
	Name      string
	Host      string // host[:port] the token is for
	Username  string
	Token     []byte // sealed; nil: none
	CreatedAt time.Time
}

const gitSourceCols = `id, owner_id, type, name, host, username, token, created_at`

func scanGitSource(r rowScanner) (GitSource, error) {
	var (
		g   GitSource
		cAt string
	)
	if err := r.Scan(&g.ID, &g.OwnerID, &g.Type, &g.Name, &g.Host, &g.Username, &g.Token, &cAt); err != nil {
		return GitSource{}, err
	}
	var err error
	g.CreatedAt, err = parseTime(cAt)
	return g, err
}

// CreateGitSource stores g with a fresh ID; seal is called with that ID to
// seal the token bound to the row. A name the owner already uses is
// ErrDuplicate.
func (s *Store) CreateGitSource(ctx context.Context, g GitSource, seal func(id string) ([]byte, error)) (GitSource, error) {
	if g.OwnerID == "" || g.Name == "" || g.Host == "" || g.Type == "" {
		return GitSource{}, errors.New("create git source: missing owner, name, host or type")
	}
	g.ID = ids.NewSandboxID()
	g.CreatedAt = s.orNow(g.CreatedAt)
	if seal != nil {
		tok, err := seal(g.ID)
		if err != nil {
			return GitSource{}, fmt.Errorf("create git source: %w", err)
		}
		g.Token = tok
	}
	_, err := s.w.ExecContext(ctx, `INSERT INTO git_sources (`+gitSourceCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
		g.ID, g.OwnerID, g.Type, g.Name, g.Host, g.Username, g.Token, fmtTime(g.CreatedAt))
	switch {
	case isUnique(err):
		return GitSource{}, fmt.Errorf("create git source: name %q: %w", g.Name, ErrDuplicate)
	case err != nil:
		return GitSource{}, fmt.Errorf("create git source: %w", err)
	}
	return g, nil
}

// GetGitSource returns one source; ErrNotFound when absent.
func (s *Store) GetGitSource(ctx context.Context, id string) (GitSource, error) {
	g, err := scanGitSource(s.r.QueryRowContext(ctx, `SELECT `+gitSourceCols+` FROM git_sources WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return GitSource{}, fmt.Errorf("git source %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return GitSource{}, fmt.Errorf("get git source %s: %w", id, err)
	}
	return g, nil
}

// ListGitSources returns the owner's sources by name.
func (s *Store) ListGitSources(ctx context.Context, ownerID string) ([]GitSource, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT `+gitSourceCols+` FROM git_sources WHERE owner_id = ? ORDER BY name, id`, ownerID)
	if err != nil {
		return nil, fmt.Errorf("list git sources: %w", err)
	}
	defer rows.Close()
	out := []GitSource{}
	for rows.Next() {
		g, err := scanGitSource(rows)
		if err != nil {
			return nil, fmt.Errorf("list git sources: %w", err)
		}
		out = append(out, g)
	}
	return out, rows.Err()
}

// DeleteGitSource removes the owner's source; ErrNotFound when it does not
// exist or belongs to someone else.
func (s *Store) DeleteGitSource(ctx context.Context, ownerID, id string) error {
	res, err := s.w.ExecContext(ctx, `DELETE FROM git_sources WHERE id = ? AND owner_id = ?`, id, ownerID)
	if err != nil {
		return fmt.Errorf("delete git source %s: %w", id, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("delete git source %s: %w", id, ErrNotFound)
	}
	return nil
}

// ReplaceGitSourceToken sets the username and token of the owner's source
// id (a re-connected GitHub account); seal is called with the id to seal
// the new token bound to the row. ErrNotFound when the source does not
// exist or belongs to someone else.
func (s *Store) ReplaceGitSourceToken(ctx context.Context, ownerID, id, username string, seal func(id string) ([]byte, error)) error {
	tok, err := seal(id)
	if err != nil {
		return fmt.Errorf("replace git source token %s: %w", id, err)
	}
	res, err := s.w.ExecContext(ctx, `UPDATE git_sources SET username = ?, token = ? WHERE id = ? AND owner_id = ?`,
		username, tok, id, ownerID)
	if err != nil {
		return fmt.Errorf("replace git source token %s: %w", id, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("replace git source token %s: %w", id, ErrNotFound)
	}
	return nil
}
