package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Prebuild statuses (of the latest build; Ready says whether a finished
// prebuild exists, which a failed or running rebuild leaves in place).
const (
	PrebuildNone     = "none"
	PrebuildBuilding = "building"
	PrebuildReady    = "ready"
	PrebuildFailed   = "failed"
)

// Sources of a ready prebuild.
const (
	SourceBuild   = "build"
	SourcePromote = "promote"
)

// ErrBusy refuses a second build of a workspace while one runs.
var ErrBusy = errors.New("a prebuild is already running")

// Prebuild is a workspace's prebuild state.
type Prebuild struct {
	WorkspaceID string            `json:"workspaceId"`
	Status      string            `json:"status" enum:"none,building,ready,failed"`
	Ready       bool              `json:"ready" doc:"A finished prebuild exists and new sandboxes start from it."`
	Commits     map[string]string `json:"commits" doc:"Clone path -> commit of the ready prebuild."`
	BuiltAt     *time.Time        `json:"builtAt"`
	CheckedAt   *time.Time        `json:"checkedAt"`
	Stale       bool              `json:"stale" doc:"A tracked branch moved since the ready prebuild was built."`
	BuildID     string            `json:"buildId,omitempty" doc:"Sandbox running the current build."`
	Error       string            `json:"error,omitempty"`
	Log         string            `json:"log,omitempty" doc:"The last build's steps and their results."`
	// Source is where the ready prebuild came from; a failed or running
	// rebuild leaves it as it was.
	Source          string    `json:"source,omitempty" doc:"Where the ready prebuild came from: build (a prebuild build) or promote (a sandbox saved as the prebuild, sourceSandboxId); absent without one."`
	SourceSandboxID string    `json:"sourceSandboxId,omitempty" doc:"The sandbox a promoted prebuild was saved from."`
	UpdatedAt       time.Time `json:"updatedAt"`
}

const prebuildCols = `workspace_id, status, ready, commits, built_at, checked_at, stale, build_id, error, log, updated_at, source, source_sandbox_id`

func scanPrebuild(r rowScanner) (Prebuild, error) {
	var (
		p            Prebuild
		commits, uAt string
		bAt, cAt     sql.NullString
	)
	if err := r.Scan(&p.WorkspaceID, &p.Status, &p.Ready, &commits, &bAt, &cAt, &p.Stale, &p.BuildID, &p.Error, &p.Log, &uAt, &p.Source, &p.SourceSandboxID); err != nil {
		return Prebuild{}, err
	}
	if err := json.Unmarshal([]byte(commits), &p.Commits); err != nil {
		return Prebuild{}, fmt.Errorf("decode prebuild commits: %w", err)
	}
	var err error
	if p.BuiltAt, err = parseTimePtr(bAt); err != nil {
		return Prebuild{}, err
	}
	if p.CheckedAt, err = parseTimePtr(cAt); err != nil {
		return Prebuild{}, err
	}
	p.UpdatedAt, err = parseTime(uAt)
	return p, err
}

// GetPrebuild returns the workspace's prebuild state; status none when it
// never had one.
func (s *Store) GetPrebuild(ctx context.Context, workspaceID string) (Prebuild, error) {
	p, err := scanPrebuild(s.r.QueryRowContext(ctx, `SELECT `+prebuildCols+` FROM prebuilds WHERE workspace_id = ?`, workspaceID))
	if errors.Is(err, sql.ErrNoRows) {
		return Prebuild{WorkspaceID: workspaceID, Status: PrebuildNone, Commits: map[string]string{}}, nil
	}
	if err != nil {
		return Prebuild{}, fmt.Errorf("get prebuild of %s: %w", workspaceID, err)
	}
	return p, nil
}

// ListPrebuilds returns every prebuild row.
func (s *Store) ListPrebuilds(ctx context.Context) ([]Prebuild, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT `+prebuildCols+` FROM prebuilds ORDER BY workspace_id`)
	if err != nil {
		return nil, fmt.Errorf("list prebuilds: %w", err)
	}
	defer rows.Close()
	var out []Prebuild
	for rows.Next() {
		p, err := scanPrebuild(rows)
		if err != nil {
			return nil, fmt.Errorf("list prebuilds: %w", err)
		}
		out = append(out, p)
	}
	return out, rows.Err()
}

// BeginPrebuild marks a build of the workspace as running: ErrBusy when one
// already is. The ready prebuild, if any, stays usable.
func (s *Store) BeginPrebuild(ctx context.Context, workspaceID string) error {
	now := fmtTime(s.now())
	err := s.tx(ctx, func(tx *sql.Tx) error {
		var status string
		err := tx.QueryRowContext(ctx, `SELECT status FROM prebuilds WHERE workspace_id = ?`, workspaceID).Scan(&status)
		switch {
		case errors.Is(err, sql.ErrNoRows):
			_, err = tx.ExecContext(ctx, `INSERT INTO prebuilds (workspace_id, status, updated_at) VALUES (?, ?, ?)`,
				workspaceID, PrebuildBuilding, now)
			return err
		case err != nil:
			return err
		case status == PrebuildBuilding:
			return ErrBusy
		}
		_, err = tx.ExecContext(ctx, `UPDATE prebuilds SET status = ?, error = '', log = '', build_id = '', updated_at = ?
			WHERE workspace_id = ?`, PrebuildBuilding, now, workspaceID)
		return err
	})
	if err != nil {
		return fmt.Errorf("begin prebuild of %s: %w", workspaceID, err)
	}
	return nil
}

// UpdatePrebuild changes the workspace's prebuild row under the write lock.
// Each writer changes only its own fields, never a copy read earlier
// (reference weak point 30).
func (s *Store) UpdatePrebuild(ctx context.Context, workspaceID string, mutate func(*Prebuild)) (Prebuild, error) {
	var out Prebuild
	err := s.tx(ctx, func(tx *sql.Tx) error {
		p, err := scanPrebuild(tx.QueryRowContext(ctx, `SELECT `+prebuildCols+` FROM prebuilds WHERE workspace_id = ?`, workspaceID))
		if errors.Is(err, sql.ErrNoRows) {
			return ErrNotFound
		}
		if err != nil {
			return err
		}
		mutate(&p)
		if p.Commits == nil {
			p.Commits = map[string]string{}
		}
		commits, err := json.Marshal(p.Commits)
		if err != nil {
			return err
		}
		p.UpdatedAt = s.now().UTC()
		_, err = tx.ExecContext(ctx, `UPDATE prebuilds SET status = ?, ready = ?, commits = ?, built_at = ?, checked_at = ?,
			stale = ?, build_id = ?, error = ?, log = ?, updated_at = ?, source = ?, source_sandbox_id = ? WHERE workspace_id = ?`,
			p.Status, b2i(p.Ready), string(commits), fmtTimePtr(p.BuiltAt), fmtTimePtr(p.CheckedAt), b2i(p.Stale), p.BuildID,
			p.Error, p.Log, fmtTime(p.UpdatedAt), p.Source, p.SourceSandboxID, workspaceID)
		out = p
		return err
	})
	if err != nil {
		return Prebuild{}, fmt.Errorf("update prebuild of %s: %w", workspaceID, err)
	}
	return out, nil
}

// b2i writes a boolean as the INTEGER 0/1 both backends store.
func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}
