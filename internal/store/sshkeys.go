package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"atelier/internal/ids"
)

// sshKeyIDLen matches the other row ids.
const sshKeyIDLen = 12

// SSHKey is a user's registered public key. PublicKey is the authorized_keys
// line as stored (type and base64, the comment dropped); Fingerprint is
// "SHA256:<unpadded base64>" of the wire-format key.
type SSHKey struct {
	ID          string     `json:"id"`
	UserID      string     `json:"userId"`
	Name        string     `json:"name"`
	PublicKey   string     `json:"publicKey"`
	Fingerprint string     `json:"fingerprint"`
	Type        string     `json:"type"`
	ExpiresAt   *time.Time `json:"expiresAt"`
	CreatedAt   time.Time  `json:"createdAt"`
}

// Usable reports whether the key may authenticate at now.
func (k SSHKey) Usable(now time.Time) bool {
	return k.ExpiresAt == nil || now.Before(*k.ExpiresAt)
}

const sshKeyCols = `id, user_id, name, public_key, fingerprint, type, expires_at, created_at`

func scanSSHKey(r rowScanner) (SSHKey, error) {
	var (
		k   SSHKey
		eAt sql.NullString
		cAt string
	)
	if err := r.Scan(&k.ID, &k.UserID, &k.Name, &k.PublicKey, &k.Fingerprint, &k.Type, &eAt, &cAt); err != nil {
		return SSHKey{}, err
	}
	var err error
	if k.ExpiresAt, err = parseTimePtr(eAt); err != nil {
		return SSHKey{}, err
	}
	if k.CreatedAt, err = parseTime(cAt); err != nil {
		return SSHKey{}, err
	}
	return k, nil
}

// CreateSSHKey stores k with a fresh ID (and CreatedAt now when zero) and
// returns the stored row. The same fingerprint twice for one user is
// ErrDuplicate; different users may register the same key.
func (s *Store) CreateSSHKey(ctx context.Context, k SSHKey) (SSHKey, error) {
	if k.UserID == "" || k.PublicKey == "" || k.Fingerprint == "" || k.Type == "" {
		return SSHKey{}, errors.New("create ssh key: missing user id, public key, fingerprint or type")
	}
	k.ID = ids.New(sshKeyIDLen)
	k.CreatedAt = s.orNow(k.CreatedAt)
	if k.ExpiresAt != nil {
		e := k.ExpiresAt.UTC()
		k.ExpiresAt = &e
	}
	_, err := s.w.ExecContext(ctx, `INSERT INTO ssh_keys (`+sshKeyCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
		k.ID, k.UserID, k.Name, k.PublicKey, k.Fingerprint, k.Type, fmtTimePtr(k.ExpiresAt), fmtTime(k.CreatedAt))
	switch {
	case isUnique(err):
		return SSHKey{}, fmt.Errorf("create ssh key: fingerprint %s is already registered: %w", k.Fingerprint, ErrDuplicate)
	case err != nil:
		return SSHKey{}, fmt.Errorf("create ssh key for user %s: %w", k.UserID, err)
	}
	return k, nil
}

// ListSSHKeys returns the user's keys, expired ones included, oldest first.
func (s *Store) ListSSHKeys(ctx context.Context, userID string) ([]SSHKey, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT `+sshKeyCols+` FROM ssh_keys WHERE user_id = ?
		ORDER BY created_at, id`, userID)
	if err != nil {
		return nil, fmt.Errorf("list ssh keys: %w", err)
	}
	return collectSSHKeys(rows, "list ssh keys")
}

// DeleteSSHKey removes the user's key id. ErrNotFound when it does not exist
// or belongs to someone else.
func (s *Store) DeleteSSHKey(ctx context.Context, userID, id string) error {
	res, err := s.w.ExecContext(ctx, `DELETE FROM ssh_keys WHERE id = ? AND user_id = ?`, id, userID)
	if err != nil {
		return fmt.Errorf("delete ssh key %s: %w", id, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("delete ssh key %s: %w", id, ErrNotFound)
	}
	return nil
}

// LookupSSHKeys returns every key with this fingerprint that is usable at
// now, across users (two accounts may hold the same key). The SSH proxy
// calls it once per authentication, so a deleted or expired key stops
// working on the next connection.
func (s *Store) LookupSSHKeys(ctx context.Context, fingerprint string, now time.Time) ([]SSHKey, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT `+sshKeyCols+` FROM ssh_keys
		WHERE fingerprint = ? AND (expires_at IS NULL OR expires_at > ?) ORDER BY created_at, id`,
		fingerprint, fmtTime(now))
	if err != nil {
		return nil, fmt.Errorf("lookup ssh keys: %w", err)
	}
	return collectSSHKeys(rows, "lookup ssh keys")
}

func collectSSHKeys(rows *sql.Rows, what string) ([]SSHKey, error) {
	defer rows.Close()
	out := []SSHKey{}
	for rows.Next() {
		k, err := scanSSHKey(rows)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", what, err)
		}
		out = append(out, k)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return out, nil
}
