package store

import (
	"context"
	"database/sql"
	"fmt"
	"time"
)

// ListUserSessions returns userID's live sessions at now (not revoked, not
// expired), newest first: what the dashboard's settings page lists.
func (s *Store) ListUserSessions(ctx context.Context, userID string, now time.Time) ([]Session, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT id, user_id, created_at, expires_at, revoked_at FROM sessions
		WHERE user_id = ? AND revoked_at IS NULL AND expires_at > ? ORDER BY created_at DESC, id`, userID, fmtTime(now))
	if err != nil {
		return nil, fmt.Errorf("list sessions of user %s: %w", userID, err)
	}
	defer rows.Close()
	out := []Session{}
	for rows.Next() {
		var (
			sess     Session
			cAt, eAt string
			rAt      sql.NullString
		)
		if err := rows.Scan(&sess.ID, &sess.UserID, &cAt, &eAt, &rAt); err != nil {
			return nil, fmt.Errorf("list sessions of user %s: %w", userID, err)
		}
		if sess.CreatedAt, err = parseTime(cAt); err != nil {
			return nil, fmt.Errorf("list sessions of user %s: %w", userID, err)
		}
		if sess.ExpiresAt, err = parseTime(eAt); err != nil {
			return nil, fmt.Errorf("list sessions of user %s: %w", userID, err)
		}
		out = append(out, sess)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list sessions of user %s: %w", userID, err)
	}
	return out, nil
}

// Usage is what one owner holds, as the quotas count it.
type Usage struct {
	Sandboxes int   // rows in any state
	Running   int   // in an active status (creating, starting, running, stopping)
	DiskBytes int64 // sum of their disks' virtual sizes
}

// OwnerUsage counts what owner holds now, the numbers checkQuotas compares
// with the quotas.
func (s *Store) OwnerUsage(ctx context.Context, owner string) (Usage, error) {
	var u Usage
	err := s.r.QueryRowContext(ctx, `SELECT count(*),
		coalesce(sum(CASE WHEN status IN `+inList(len(ActiveStatuses))+` THEN 1 ELSE 0 END), 0),
		coalesce(sum(disk_bytes), 0)
		FROM sandboxes WHERE owner_id = ?`, append(statusArgs(ActiveStatuses), owner)...).Scan(&u.Sandboxes, &u.Running, &u.DiskBytes)
	if err != nil {
		return Usage{}, fmt.Errorf("usage of owner %s: %w", owner, err)
	}
	return u, nil
}

// ListUsers returns every user, by login: the names an admin's dashboard
// shows for the owners of the sandboxes it lists.
func (s *Store) ListUsers(ctx context.Context) ([]User, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT `+userCols+` FROM users ORDER BY login, id`)
	if err != nil {
		return nil, fmt.Errorf("list users: %w", err)
	}
	defer rows.Close()
	out := []User{}
	for rows.Next() {
		u, err := scanUser(rows)
		if err != nil {
			return nil, fmt.Errorf("list users: %w", err)
		}
		out = append(out, u)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list users: %w", err)
	}
	return out, nil
}
