package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"atelier/internal/ids"
)

// Workspace is a user's recipe for sandboxes. Config is the JSON the
// workspace package defines (repositories, commands, variables); the store
// keeps it opaque. Secrets live in workspace_secrets, sealed.
type Workspace struct {
	ID        string
	OwnerID   string
	Name      string
	Config    json.RawMessage
	CreatedAt time.Time
	UpdatedAt time.Time
}

// Secret kinds.
const (
	SecretEnv  = "env"
	SecretFile = "file"
)

// WorkspaceSecret is one sealed secret: an environment variable (Name is
// the variable) or a file (Name is its absolute path in the guest, Mode its
// permission bits). Sealed is opaque to the store.
type WorkspaceSecret struct {
	Kind   string
	Name   string
	Mode   int
	Sealed []byte
}

// InUseError refuses deleting a workspace that sandboxes still belong to:
// their volumes, addresses and routes would leak if only the rows went
// (reference weak point 31).
type InUseError struct {
	WorkspaceID string
	SandboxIDs  []string
}

func (e *InUseError) Error() string {
	return fmt.Sprintf("workspace %s has sandboxes %s: destroy them first", e.WorkspaceID, strings.Join(e.SandboxIDs, ", "))
}

// Is makes errors.Is(err, ErrConflict) hold.
func (e *InUseError) Is(target error) bool { return target == ErrConflict }

const workspaceCols = `id, owner_id, name, config, created_at, updated_at`

func scanWorkspace(r rowScanner) (Workspace, error) {
	var (
		w        Workspace
		cfg      string
		cAt, uAt string
	)
	if err := r.Scan(&w.ID, &w.OwnerID, &w.Name, &cfg, &cAt, &uAt); err != nil {
		return Workspace{}, err
	}
	w.Config = json.RawMessage(cfg)
	var err error
	if w.CreatedAt, err = parseTime(cAt); err != nil {
		return Workspace{}, err
	}
	if w.UpdatedAt, err = parseTime(uAt); err != nil {
		return Workspace{}, err
	}
	return w, nil
}

// CreateWorkspace stores w with a fresh ID and its secrets in one
// transaction. seal is called with the new ID for each secret, since a
// sealed value is bound to its workspace. A name the owner already uses is
// ErrDuplicate.
func (s *Store) CreateWorkspace(ctx context.Context, w Workspace, secrets []WorkspaceSecret, seal func(id string, sec *WorkspaceSecret) error) (Workspace, error) {
	if w.OwnerID == "" || w.Name == "" || len(w.Config) == 0 {
		return Workspace{}, errors.New("create workspace: missing owner, name or config")
	}
	w.ID = ids.NewSandboxID()
	w.CreatedAt = s.orNow(w.CreatedAt)
	w.UpdatedAt = w.CreatedAt
	err := s.tx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO workspaces (`+workspaceCols+`) VALUES (?, ?, ?, ?, ?, ?)`,
			w.ID, w.OwnerID, w.Name, string(w.Config), fmtTime(w.CreatedAt), fmtTime(w.UpdatedAt))
		if isUnique(err) {
			return fmt.Errorf("workspace name %q: %w", w.Name, ErrDuplicate)
		}
		if err != nil {
			return err
		}
		for i := range secrets {
			if err := seal(w.ID, &secrets[i]); err != nil {
				return err
			}
			if err := putSecret(ctx, tx, w.ID, secrets[i], w.UpdatedAt); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return Workspace{}, fmt.Errorf("create workspace: %w", err)
	}
	return w, nil
}

func putSecret(ctx context.Context, tx *sql.Tx, wsID string, sec WorkspaceSecret, at time.Time) error {
	if sec.Kind != SecretEnv && sec.Kind != SecretFile {
		return fmt.Errorf("secret %s: unknown kind %q", sec.Name, sec.Kind)
	}
	_, err := tx.ExecContext(ctx, `INSERT INTO workspace_secrets (workspace_id, kind, name, mode, sealed, updated_at)
		VALUES (?, ?, ?, ?, ?, ?)
		ON CONFLICT (workspace_id, kind, name) DO UPDATE SET mode = excluded.mode, sealed = excluded.sealed,
			updated_at = excluded.updated_at`,
		wsID, sec.Kind, sec.Name, sec.Mode, sec.Sealed, fmtTime(at))
	if err != nil {
		return fmt.Errorf("store secret %s: %w", sec.Name, err)
	}
	return nil
}

// GetWorkspace returns one workspace; ErrNotFound when absent.
func (s *Store) GetWorkspace(ctx context.Context, id string) (Workspace, error) {
	w, err := scanWorkspace(s.r.QueryRowContext(ctx, `SELECT `+workspaceCols+` FROM workspaces WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return Workspace{}, fmt.Errorf("workspace %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return Workspace{}, fmt.Errorf("get workspace %s: %w", id, err)
	}
	return w, nil
}

// ListWorkspaces returns the owner's workspaces ("" for everyone's), by name.
func (s *Store) ListWorkspaces(ctx context.Context, ownerID string) ([]Workspace, error) {
	q := `SELECT ` + workspaceCols + ` FROM workspaces`
	var args []any
	if ownerID != "" {
		q += ` WHERE owner_id = ?`
		args = append(args, ownerID)
	}
	rows, err := s.r.QueryContext(ctx, q+` ORDER BY name, id`, args...)
	if err != nil {
		return nil, fmt.Errorf("list workspaces: %w", err)
	}
	defer rows.Close()
	out := []Workspace{}
	for rows.Next() {
		w, err := scanWorkspace(rows)
		if err != nil {
			return nil, fmt.Errorf("list workspaces: %w", err)
		}
		out = append(out, w)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list workspaces: %w", err)
	}
	return out, nil
}

// WorkspaceChange is an update: the new name and config (empty: kept), the
// secrets to add or replace (already sealed for this workspace) and the
// secrets to remove, all applied in one transaction.
type WorkspaceChange struct {
	Name   string
	Config json.RawMessage
	Put    []WorkspaceSecret
	Delete []WorkspaceSecret // Kind and Name only
}

// UpdateWorkspace applies ch to workspace id and returns the stored row.
func (s *Store) UpdateWorkspace(ctx context.Context, id string, ch WorkspaceChange) (Workspace, error) {
	now := s.now().UTC()
	err := s.tx(ctx, func(tx *sql.Tx) error {
		var sets []string
		var args []any
		if ch.Name != "" {
			sets, args = append(sets, "name = ?"), append(args, ch.Name)
		}
		if len(ch.Config) > 0 {
			sets, args = append(sets, "config = ?"), append(args, string(ch.Config))
		}
		sets, args = append(sets, "updated_at = ?"), append(args, fmtTime(now))
		res, err := tx.ExecContext(ctx, `UPDATE workspaces SET `+strings.Join(sets, ", ")+` WHERE id = ?`, append(args, id)...)
		if isUnique(err) {
			return fmt.Errorf("workspace name %q: %w", ch.Name, ErrDuplicate)
		}
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return ErrNotFound
		}
		for _, d := range ch.Delete {
			if _, err := tx.ExecContext(ctx, `DELETE FROM workspace_secrets WHERE workspace_id = ? AND kind = ? AND name = ?`,
				id, d.Kind, d.Name); err != nil {
				return fmt.Errorf("delete secret %s: %w", d.Name, err)
			}
		}
		for _, p := range ch.Put {
			if err := putSecret(ctx, tx, id, p, now); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return Workspace{}, fmt.Errorf("update workspace %s: %w", id, err)
	}
	return s.GetWorkspace(ctx, id)
}

// DeleteWorkspace removes a workspace, its secrets and its prebuild row. A
// workspace that sandboxes still belong to is an *InUseError; the caller
// removes the prebuild volume.
func (s *Store) DeleteWorkspace(ctx context.Context, id string) error {
	err := s.tx(ctx, func(tx *sql.Tx) error {
		rows, err := tx.QueryContext(ctx, `SELECT id FROM sandboxes WHERE workspace_id = ? ORDER BY id`, id)
		if err != nil {
			return err
		}
		var inUse []string
		for rows.Next() {
			var sid string
			if err := rows.Scan(&sid); err != nil {
				rows.Close()
				return err
			}
			inUse = append(inUse, sid)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		if len(inUse) > 0 {
			return &InUseError{WorkspaceID: id, SandboxIDs: inUse}
		}
		// config_files has no foreign key (its global scope is '').
		if _, err := tx.ExecContext(ctx, `DELETE FROM config_files WHERE workspace_id = ?`, id); err != nil {
			return err
		}
		res, err := tx.ExecContext(ctx, `DELETE FROM workspaces WHERE id = ?`, id)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return ErrNotFound
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("delete workspace %s: %w", id, err)
	}
	return nil
}

// WorkspaceSecrets returns the workspace's sealed secrets, env first, by name.
func (s *Store) WorkspaceSecrets(ctx context.Context, id string) ([]WorkspaceSecret, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT kind, name, mode, sealed FROM workspace_secrets
		WHERE workspace_id = ? ORDER BY kind, name`, id)
	if err != nil {
		return nil, fmt.Errorf("workspace %s secrets: %w", id, err)
	}
	defer rows.Close()
	out := []WorkspaceSecret{}
	for rows.Next() {
		var sec WorkspaceSecret
		if err := rows.Scan(&sec.Kind, &sec.Name, &sec.Mode, &sec.Sealed); err != nil {
			return nil, fmt.Errorf("workspace %s secrets: %w", id, err)
		}
		out = append(out, sec)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("workspace %s secrets: %w", id, err)
	}
	return out, nil
}
