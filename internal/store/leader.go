package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Leadership is one manager's claim to a job only one manager of a shared
// store may run (the reconciler, journal and event pruning). It lives in
// settings under "leader:"+name, so it needs no table of its own.
type Leadership struct {
	Holder    string    `json:"holder"`
	ExpiresAt time.Time `json:"expiresAt"`
}

// AcquireLeader makes holder the leader of name until now+ttl when nobody
// holds it, its lease has expired, or holder holds it already (a renewal).
// It reports whether holder leads, and the current claim either way. The
// check and the write are one write transaction, so two managers never both
// win. Expiry uses each manager's own clock: keep their skew well below ttl.
func (s *Store) AcquireLeader(ctx context.Context, name, holder string, ttl time.Duration) (bool, Leadership, error) {
	if name == "" || holder == "" || ttl <= 0 {
		return false, Leadership{}, fmt.Errorf("acquire leader %q: empty name or holder, or ttl %s <= 0", name, ttl)
	}
	key := "leader:" + name
	var (
		won bool
		cur Leadership
	)
	err := s.tx(ctx, func(tx *sql.Tx) error {
		now := s.now().UTC()
		var raw string
		err := tx.QueryRowContext(ctx, `SELECT value FROM settings WHERE key = ?`, key).Scan(&raw)
		switch {
		case errors.Is(err, sql.ErrNoRows):
		case err != nil:
			return err
		default:
			if err := json.Unmarshal([]byte(raw), &cur); err != nil {
				return fmt.Errorf("decode %s: %w", key, err)
			}
			if cur.Holder != holder && now.Before(cur.ExpiresAt) {
				return nil // someone else leads
			}
		}
		cur = Leadership{Holder: holder, ExpiresAt: now.Add(ttl)}
		b, _ := json.Marshal(cur)
		if _, err := tx.ExecContext(ctx, `INSERT INTO settings (key, value, updated_at) VALUES (?, ?, ?)
			ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at`,
			key, string(b), fmtTime(now)); err != nil {
			return err
		}
		won = true
		return nil
	})
	if err != nil {
		return false, Leadership{}, fmt.Errorf("acquire leader %s for %s: %w", name, holder, err)
	}
	return won, cur, nil
}

// ReleaseLeader gives up holder's claim to name, so another manager takes
// over at once instead of after the lease expires. Releasing a claim held
// by someone else, or none, changes nothing.
func (s *Store) ReleaseLeader(ctx context.Context, name, holder string) error {
	key := "leader:" + name
	err := s.tx(ctx, func(tx *sql.Tx) error {
		var raw string
		err := tx.QueryRowContext(ctx, `SELECT value FROM settings WHERE key = ?`, key).Scan(&raw)
		if errors.Is(err, sql.ErrNoRows) {
			return nil
		}
		if err != nil {
			return err
		}
		var cur Leadership
		if json.Unmarshal([]byte(raw), &cur) == nil && cur.Holder != holder {
			return nil
		}
		_, err = tx.ExecContext(ctx, `DELETE FROM settings WHERE key = ?`, key)
		return err
	})
	if err != nil {
		return fmt.Errorf("release leader %s for %s: %w", name, holder, err)
	}
	return nil
}

// TouchSandboxes sets updated_at to now on the given sandboxes: the manager
// working on them tells the other replicas' reconcilers it is alive.
func (s *Store) TouchSandboxes(ctx context.Context, ids []string) error {
	if len(ids) == 0 {
		return nil
	}
	args := []any{fmtTime(s.now())}
	for _, id := range ids {
		args = append(args, id)
	}
	if _, err := s.w.ExecContext(ctx, `UPDATE sandboxes SET updated_at = ? WHERE id IN `+inList(len(ids)), args...); err != nil {
		return fmt.Errorf("touch %d sandboxes: %w", len(ids), err)
	}
	return nil
}
