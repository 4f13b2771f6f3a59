package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
)

// AppendEvent stores ev and returns it with its ID, which is greater than
// every ID handed out before (even after a trim), and CreatedAt (now when
// zero). Data, when set, must be valid JSON.
func (s *Store) AppendEvent(ctx context.Context, ev Event) (Event, error) {
	if ev.Type == "" {
		return Event{}, errors.New("append event: empty type")
	}
	var data any
	if len(ev.Data) > 0 {
		if !json.Valid(ev.Data) {
			return Event{}, fmt.Errorf("append event %s: data is not valid JSON", ev.Type)
		}
		data = string(ev.Data)
	}
	ev.CreatedAt = s.orNow(ev.CreatedAt)
	// Inside the write lock: an event id is then committed only after every
	// smaller one, so a replica tailing `id > last` never skips one.
	err := s.tx(ctx, func(tx *sql.Tx) error {
		if err := tx.QueryRowContext(ctx, `INSERT INTO events (type, sandbox_id, data, created_at) VALUES (?, ?, ?, ?)
		RETURNING id`, ev.Type, ev.SandboxID, data, fmtTime(ev.CreatedAt)).Scan(&ev.ID); err != nil {
			return err
		}
		if s.pg {
			// Delivered at commit to every replica's ListenEvents.
			_, err := tx.ExecContext(ctx, `SELECT pg_notify(?, ?)`, eventChannel, strconv.FormatInt(ev.ID, 10))
			return err
		}
		return nil
	})
	if err != nil {
		return Event{}, fmt.Errorf("append event %s: %w", ev.Type, err)
	}
	ev.CreatedAt, _ = parseTime(fmtTime(ev.CreatedAt))
	return ev, nil
}

// EventsSince returns events with ID > afterID in ascending order, at most
// limit of them (limit <= 0: all).
func (s *Store) EventsSince(ctx context.Context, afterID int64, limit int) ([]Event, error) {
	q, args := `SELECT id, type, sandbox_id, data, created_at FROM events
		WHERE id > ? ORDER BY id`, []any{afterID}
	if limit > 0 {
		q, args = q+` LIMIT ?`, append(args, limit)
	}
	rows, err := s.r.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("list events after %d: %w", afterID, err)
	}
	defer rows.Close()
	out := []Event{}
	for rows.Next() {
		var (
			ev   Event
			data sql.NullString
			cAt  string
		)
		if err := rows.Scan(&ev.ID, &ev.Type, &ev.SandboxID, &data, &cAt); err != nil {
			return nil, fmt.Errorf("list events after %d: %w", afterID, err)
		}
		if data.Valid {
			ev.Data = json.RawMessage(data.String)
		}
		if ev.CreatedAt, err = parseTime(cAt); err != nil {
			return nil, fmt.Errorf("list events after %d: %w", afterID, err)
		}
		out = append(out, ev)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list events after %d: %w", afterID, err)
	}
	return out, nil
}

// OldestEventID returns the smallest stored event ID, 0 when there is none.
// A client resuming from an ID below it has missed events.
func (s *Store) OldestEventID(ctx context.Context) (int64, error) {
	var id int64
	if err := s.r.QueryRowContext(ctx, `SELECT coalesce(min(id), 0) FROM events`).Scan(&id); err != nil {
		return 0, fmt.Errorf("oldest event id: %w", err)
	}
	return id, nil
}

// TrimEvents deletes all but the newest keep events.
func (s *Store) TrimEvents(ctx context.Context, keep int) error {
	if keep < 0 {
		return fmt.Errorf("trim events: negative keep %d", keep)
	}
	_, err := s.w.ExecContext(ctx, `DELETE FROM events WHERE id <= coalesce(
		(SELECT id FROM events ORDER BY id DESC LIMIT 1 OFFSET ?), 0)`, keep)
	if err != nil {
		return fmt.Errorf("trim events to %d: %w", keep, err)
	}
	return nil
}

// GetSetting JSON-decodes the setting key into dst. It reports false, and
// leaves dst alone, when the key is unset.
func (s *Store) GetSetting(ctx context.Context, key string, dst any) (bool, error) {
	var raw string
	err := s.r.QueryRowContext(ctx, `SELECT value FROM settings WHERE key = ?`, key).Scan(&raw)
	if errors.Is(err, sql.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("get setting %s: %w", key, err)
	}
	if err := json.Unmarshal([]byte(raw), dst); err != nil {
		return false, fmt.Errorf("decode setting %s: %w", key, err)
	}
	return true, nil
}

// PutSetting stores value, JSON-encoded, under key, replacing any previous
// value.
func (s *Store) PutSetting(ctx context.Context, key string, value any) error {
	if key == "" {
		return errors.New("put setting: empty key")
	}
	b, err := json.Marshal(value)
	if err != nil {
		return fmt.Errorf("encode setting %s: %w", key, err)
	}
	_, err = s.w.ExecContext(ctx, `INSERT INTO settings (key, value, updated_at) VALUES (?, ?, ?)
		ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at`,
		key, string(b), fmtTime(s.now()))
	if err != nil {
		return fmt.Errorf("put setting %s: %w", key, err)
	}
	return nil
}

// PutSettingIfAbsent stores value under key unless the key is set, and
// reports whether it did: of several managers racing, one wins.
func (s *Store) PutSettingIfAbsent(ctx context.Context, key string, value any) (bool, error) {
	if key == "" {
		return false, errors.New("put setting: empty key")
	}
	b, err := json.Marshal(value)
	if err != nil {
		return false, fmt.Errorf("encode setting %s: %w", key, err)
	}
	res, err := s.w.ExecContext(ctx, `INSERT INTO settings (key, value, updated_at) VALUES (?, ?, ?)
		ON CONFLICT (key) DO NOTHING`, key, string(b), fmtTime(s.now()))
	if err != nil {
		return false, fmt.Errorf("put setting %s: %w", key, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return false, fmt.Errorf("put setting %s: %w", key, err)
	}
	return n == 1, nil
}
