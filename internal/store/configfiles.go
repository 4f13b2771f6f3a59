package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// ConfigFile is one config file of a scope: WorkspaceID "" is the global
// (host-wide) set. Path and Content are validated by package guestfiles.
type ConfigFile struct {
	WorkspaceID string
	Path        string
	Content     string
	Mode        int
	UpdatedAt   time.Time
}

// ConfigFiles lists the files of one scope ("" global) by path.
func (s *Store) ConfigFiles(ctx context.Context, workspaceID string) ([]ConfigFile, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT workspace_id, path, content, mode, updated_at FROM config_files
		WHERE workspace_id = ? ORDER BY path`, workspaceID)
	if err != nil {
		return nil, fmt.Errorf("list config files: %w", err)
	}
	defer rows.Close()
	var out []ConfigFile
	for rows.Next() {
		var f ConfigFile
		var at string
		if err := rows.Scan(&f.WorkspaceID, &f.Path, &f.Content, &f.Mode, &at); err != nil {
			return nil, fmt.Errorf("list config files: %w", err)
		}
		if f.UpdatedAt, err = parseTime(at); err != nil {
			return nil, err
		}
		out = append(out, f)
	}
	return out, rows.Err()
}

// ReplaceConfigFiles makes files the whole set of one scope, in one
// transaction: a reader sees the old set or the new one, never a mix.
func (s *Store) ReplaceConfigFiles(ctx context.Context, workspaceID string, files []ConfigFile) error {
	now := fmtTime(s.now())
	err := s.tx(ctx, func(tx *sql.Tx) error {
		if workspaceID != "" {
			var one int
			err := tx.QueryRowContext(ctx, `SELECT 1 FROM workspaces WHERE id = ?`, workspaceID).Scan(&one)
			if errors.Is(err, sql.ErrNoRows) {
				return fmt.Errorf("workspace %s: %w", workspaceID, ErrNotFound)
			}
			if err != nil {
				return err
			}
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM config_files WHERE workspace_id = ?`, workspaceID); err != nil {
			return err
		}
		for _, f := range files {
			_, err := tx.ExecContext(ctx, `INSERT INTO config_files (workspace_id, path, content, mode, updated_at)
				VALUES (?, ?, ?, ?, ?)`, workspaceID, f.Path, f.Content, f.Mode, now)
			if isUnique(err) {
				return fmt.Errorf("config file %s twice: %w", f.Path, ErrDuplicate)
			}
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("replace config files: %w", err)
	}
	return nil
}

// ConfigFilePushes returns path → hash of what was last pushed into a sandbox.
func (s *Store) ConfigFilePushes(ctx context.Context, sandboxID string) (map[string]string, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT path, hash FROM config_file_pushes WHERE sandbox_id = ?`, sandboxID)
	if err != nil {
		return nil, fmt.Errorf("config file pushes: %w", err)
	}
	defer rows.Close()
	out := map[string]string{}
	for rows.Next() {
		var p, h string
		if err := rows.Scan(&p, &h); err != nil {
			return nil, fmt.Errorf("config file pushes: %w", err)
		}
		out[p] = h
	}
	return out, rows.Err()
}

// RecordConfigFilePush remembers the hash of what was written at path.
func (s *Store) RecordConfigFilePush(ctx context.Context, sandboxID, path, hash string) error {
	err := s.tx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO config_file_pushes (sandbox_id, path, hash, pushed_at) VALUES (?, ?, ?, ?)
			ON CONFLICT (sandbox_id, path) DO UPDATE SET hash = excluded.hash, pushed_at = excluded.pushed_at`,
			sandboxID, path, hash, fmtTime(s.now()))
		return err
	})
	if err != nil {
		return fmt.Errorf("record config file push %s: %w", path, err)
	}
	return nil
}
