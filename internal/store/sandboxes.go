package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

const sandboxCols = `id, name, owner_id, workspace_id, image, status, vcpus, memory_mb, ip, mac, error,
	disk_bytes, volume_driver, timings, created_at, updated_at`

func scanSandbox(r rowScanner) (Sandbox, error) {
	var (
		sb       Sandbox
		status   string
		timings  sql.NullString
		cAt, uAt string
	)
	if err := r.Scan(&sb.ID, &sb.Name, &sb.OwnerID, &sb.WorkspaceID, &sb.Image, &status, &sb.Vcpus,
		&sb.MemoryMB, &sb.IP, &sb.MAC, &sb.Error, &sb.DiskBytes, &sb.VolumeDriver, &timings, &cAt, &uAt); err != nil {
		return Sandbox{}, err
	}
	sb.Status = Status(status)
	if timings.Valid {
		if err := json.Unmarshal([]byte(timings.String), &sb.Timings); err != nil {
			return Sandbox{}, fmt.Errorf("decode timings of %s: %w", sb.ID, err)
		}
	}
	var err error
	if sb.CreatedAt, err = parseTime(cAt); err != nil {
		return Sandbox{}, err
	}
	if sb.UpdatedAt, err = parseTime(uAt); err != nil {
		return Sandbox{}, err
	}
	return sb, nil
}

// sandboxArgs returns the column values of sb in sandboxCols order.
func sandboxArgs(sb Sandbox) ([]any, error) {
	var timings any
	if sb.Timings != nil {
		b, err := json.Marshal(sb.Timings)
		if err != nil {
			return nil, fmt.Errorf("encode timings: %w", err)
		}
		timings = string(b)
	}
	return []any{sb.ID, sb.Name, sb.OwnerID, sb.WorkspaceID, sb.Image, string(sb.Status), sb.Vcpus,
		sb.MemoryMB, sb.IP, sb.MAC, sb.Error, sb.DiskBytes, sb.VolumeDriver, timings, fmtTime(sb.CreatedAt),
		fmtTime(sb.UpdatedAt)}, nil
}

func validStatus(s Status) bool { return slices.Contains(AllStatuses, s) }

// sandboxWriteErr maps constraint violations to the package's errors.
func sandboxWriteErr(err error, sb Sandbox) error {
	switch {
	case uniqueOn(err, "sandboxes.name"):
		return fmt.Errorf("name %q: %w", sb.Name, ErrDuplicate)
	case isUnique(err):
		return fmt.Errorf("id %s: %w", sb.ID, ErrDuplicate)
	}
	return err
}

// countActive counts the sandboxes holding host resources, inside tx so the
// count and the write that depends on it see the same rows.
func countActive(ctx context.Context, q interface {
	QueryRowContext(context.Context, string, ...any) *sql.Row
}) (int, error) {
	var n int
	err := q.QueryRowContext(ctx, `SELECT count(*) FROM sandboxes WHERE status IN `+inList(len(ActiveStatuses)),
		statusArgs(ActiveStatuses)...).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("count active sandboxes: %w", err)
	}
	return n, nil
}

func inList(n int) string {
	return "(" + strings.TrimSuffix(strings.Repeat("?, ", n), ", ") + ")"
}

func statusArgs(ss []Status) []any {
	out := make([]any, len(ss))
	for i, s := range ss {
		out[i] = string(s)
	}
	return out
}

// InsertSandbox stores a new sandbox. When its status is active and limit >
// 0, the active count is checked in the same immediate transaction as the
// insert, so concurrent creates can never exceed limit (ErrLimit). A
// duplicate id or (owner, name) is ErrDuplicate. Zero CreatedAt and
// UpdatedAt default to now.
func (s *Store) InsertSandbox(ctx context.Context, sb Sandbox, limit int) error {
	return s.InsertSandboxWithin(ctx, sb, Limits{Host: limit})
}

// InsertSandboxWithin is InsertSandbox checking the owner's quotas too, in
// the same transaction: a *QuotaError (ErrQuota) names the first quota the
// new row would exceed. Quotas are checked before the host limit, so a
// user at their own quota is told so rather than that the host is full.
func (s *Store) InsertSandboxWithin(ctx context.Context, sb Sandbox, lim Limits) error {
	if !validStatus(sb.Status) {
		return fmt.Errorf("insert sandbox %s: invalid status %q", sb.ID, sb.Status)
	}
	if sb.DiskBytes < 0 {
		return fmt.Errorf("insert sandbox %s: negative disk size %d", sb.ID, sb.DiskBytes)
	}
	now := s.now().UTC()
	if sb.CreatedAt.IsZero() {
		sb.CreatedAt = now
	}
	if sb.UpdatedAt.IsZero() {
		sb.UpdatedAt = now
	}
	args, err := sandboxArgs(sb)
	if err != nil {
		return fmt.Errorf("insert sandbox %s: %w", sb.ID, err)
	}
	err = s.tx(ctx, func(tx *sql.Tx) error {
		if err := checkQuotas(ctx, tx, sb.OwnerID, lim.Quotas, sb.Status.IsActive(), true, sb.DiskBytes); err != nil {
			return err
		}
		if lim.Host > 0 && sb.Status.IsActive() {
			if err := checkHost(ctx, tx, lim.Host); err != nil {
				return err
			}
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO sandboxes (`+sandboxCols+`)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`, args...)
		return sandboxWriteErr(err, sb)
	})
	if err != nil {
		return fmt.Errorf("insert sandbox %s: %w", sb.ID, err)
	}
	return nil
}

func checkHost(ctx context.Context, tx *sql.Tx, limit int) error {
	n, err := countActive(ctx, tx)
	if err != nil {
		return err
	}
	if n >= limit {
		return fmt.Errorf("%w (%d of %d in use)", ErrLimit, n, limit)
	}
	return nil
}

// checkQuotas refuses a write that would take owner past q: one more
// active sandbox (active), one more row (newRow) holding disk more bytes.
func checkQuotas(ctx context.Context, tx *sql.Tx, owner string, q Quotas, active, newRow bool, disk int64) error {
	if q == (Quotas{}) || (!active && !newRow) {
		return nil
	}
	var total, running, bytes int64
	err := tx.QueryRowContext(ctx, `SELECT count(*),
		coalesce(sum(CASE WHEN status IN `+inList(len(ActiveStatuses))+` THEN 1 ELSE 0 END), 0),
		coalesce(sum(disk_bytes), 0)
		FROM sandboxes WHERE owner_id = ?`, append(statusArgs(ActiveStatuses), owner)...).Scan(&total, &running, &bytes)
	if err != nil {
		return fmt.Errorf("count sandboxes of owner %s: %w", owner, err)
	}
	// What stopping a sandbox cannot fix is reported first.
	switch {
	case newRow && q.Sandboxes > 0 && total >= int64(q.Sandboxes):
		return &QuotaError{Quota: QuotaSandboxes, Limit: int64(q.Sandboxes), Used: total, Requested: 1}
	case newRow && q.DiskBytes > 0 && bytes+disk > q.DiskBytes:
		return &QuotaError{Quota: QuotaDisk, Limit: q.DiskBytes, Used: bytes, Requested: disk}
	case active && q.Running > 0 && running >= int64(q.Running):
		return &QuotaError{Quota: QuotaRunning, Limit: int64(q.Running), Used: running, Requested: 1}
	}
	return nil
}

// GetSandbox returns the sandbox with id, or ErrNotFound.
func (s *Store) GetSandbox(ctx context.Context, id string) (Sandbox, error) {
	sb, err := scanSandbox(s.r.QueryRowContext(ctx, `SELECT `+sandboxCols+` FROM sandboxes WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return Sandbox{}, fmt.Errorf("get sandbox %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return Sandbox{}, fmt.Errorf("get sandbox %s: %w", id, err)
	}
	return sb, nil
}

// ListSandboxes returns the sandboxes matching f, oldest first (ties by id).
// The result is never nil.
func (s *Store) ListSandboxes(ctx context.Context, f SandboxFilter) ([]Sandbox, error) {
	cols := sandboxCols
	if f.NoTimings {
		// Timings are per-create diagnostics; decoding them dominates a long list.
		cols = strings.Replace(cols, "timings,", "NULL,", 1)
	}
	q := `SELECT ` + cols + ` FROM sandboxes WHERE 1 = 1`
	var args []any
	if f.OwnerID != "" {
		q += ` AND owner_id = ?`
		args = append(args, f.OwnerID)
	}
	if f.Status != "" {
		q += ` AND status = ?`
		args = append(args, string(f.Status))
	}
	if f.Name != "" {
		q += ` AND name = ?`
		args = append(args, f.Name)
	}
	q += ` ORDER BY created_at, id`
	rows, err := s.r.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("list sandboxes: %w", err)
	}
	defer rows.Close()
	out := []Sandbox{}
	for rows.Next() {
		sb, err := scanSandbox(rows)
		if err != nil {
			return nil, fmt.Errorf("list sandboxes: %w", err)
		}
		out = append(out, sb)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list sandboxes: %w", err)
	}
	return out, nil
}

// CountSandboxes counts sandboxes in any of statuses, or all sandboxes when
// none is given.
func (s *Store) CountSandboxes(ctx context.Context, statuses ...Status) (int, error) {
	q := `SELECT count(*) FROM sandboxes`
	if len(statuses) > 0 {
		q += ` WHERE status IN ` + inList(len(statuses))
	}
	var n int
	if err := s.r.QueryRowContext(ctx, q, statusArgs(statuses)...).Scan(&n); err != nil {
		return 0, fmt.Errorf("count sandboxes: %w", err)
	}
	return n, nil
}

// Transition moves sandbox id to status to if its current status is one of
// from, in one transaction (compare-and-set). It returns *ConflictError when
// the status is not in from, ErrNotFound when the row is absent, and
// ErrLimit when the move takes a non-active sandbox into an active status
// while limit > 0 sandboxes are already active. mutate, when not nil, may
// change other fields; ID, Status, CreatedAt and UpdatedAt are the store's.
// mutate runs inside the write transaction: it must be quick and must not
// call the Store.
func (s *Store) Transition(ctx context.Context, id string, from []Status, to Status, limit int, mutate func(*Sandbox)) (Sandbox, error) {
	return s.TransitionWithin(ctx, id, from, to, Limits{Host: limit}, mutate)
}

// TransitionWithin is Transition checking, for a move into an active
// status, the owner's running quota too (*QuotaError).
func (s *Store) TransitionWithin(ctx context.Context, id string, from []Status, to Status, lim Limits, mutate func(*Sandbox)) (Sandbox, error) {
	if !validStatus(to) {
		return Sandbox{}, fmt.Errorf("transition sandbox %s: invalid status %q", id, to)
	}
	var out Sandbox
	err := s.tx(ctx, func(tx *sql.Tx) error {
		cur, err := getSandboxTx(ctx, tx, id)
		if err != nil {
			return err
		}
		if !slices.Contains(from, cur.Status) {
			return &ConflictError{ID: id, Current: cur.Status, To: to}
		}
		if to.IsActive() && !cur.Status.IsActive() {
			if err := checkQuotas(ctx, tx, cur.OwnerID, lim.Quotas, true, false, 0); err != nil {
				return err
			}
			if lim.Host > 0 {
				if err := checkHost(ctx, tx, lim.Host); err != nil {
					return err
				}
			}
		}
		out, err = s.updateTx(ctx, tx, cur, mutate, to)
		return err
	})
	if err != nil {
		var ce *ConflictError
		if errors.As(err, &ce) {
			return Sandbox{}, err // already names the sandbox and both states
		}
		return Sandbox{}, fmt.Errorf("transition sandbox %s to %s: %w", id, to, err)
	}
	return out, nil
}

// UpdateSandbox applies mutate to every field but ID, Status and CreatedAt
// (status changes go through Transition) and sets UpdatedAt. mutate runs
// inside the write transaction: it must be quick and must not call the
// Store.
func (s *Store) UpdateSandbox(ctx context.Context, id string, mutate func(*Sandbox)) (Sandbox, error) {
	var out Sandbox
	err := s.tx(ctx, func(tx *sql.Tx) error {
		cur, err := getSandboxTx(ctx, tx, id)
		if err != nil {
			return err
		}
		out, err = s.updateTx(ctx, tx, cur, mutate, cur.Status)
		return err
	})
	if err != nil {
		return Sandbox{}, fmt.Errorf("update sandbox %s: %w", id, err)
	}
	return out, nil
}

func getSandboxTx(ctx context.Context, tx *sql.Tx, id string) (Sandbox, error) {
	sb, err := scanSandbox(tx.QueryRowContext(ctx, `SELECT `+sandboxCols+` FROM sandboxes WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return Sandbox{}, ErrNotFound
	}
	return sb, err
}

func (s *Store) updateTx(ctx context.Context, tx *sql.Tx, cur Sandbox, mutate func(*Sandbox), status Status) (Sandbox, error) {
	next := cur
	// Give mutate its own map so a failed update leaves cur untouched.
	if cur.Timings != nil {
		next.Timings = make(map[string]float64, len(cur.Timings))
		for k, v := range cur.Timings {
			next.Timings[k] = v
		}
	}
	if mutate != nil {
		mutate(&next)
	}
	next.ID, next.Status, next.CreatedAt = cur.ID, status, cur.CreatedAt
	next.UpdatedAt = s.now().UTC()
	args, err := sandboxArgs(next)
	if err != nil {
		return Sandbox{}, err
	}
	// args[0] is the id: reuse it for the WHERE clause.
	_, err = tx.ExecContext(ctx, `UPDATE sandboxes SET name = ?, owner_id = ?, workspace_id = ?, image = ?,
		status = ?, vcpus = ?, memory_mb = ?, ip = ?, mac = ?, error = ?, disk_bytes = ?, volume_driver = ?,
		timings = ?, created_at = ?, updated_at = ? WHERE id = ?`, append(args[1:], args[0])...)
	if err != nil {
		return Sandbox{}, sandboxWriteErr(err, next)
	}
	return roundTrip(next), nil
}

// roundTrip returns sb as a later read would: times normalised to the
// stored precision and zone.
func roundTrip(sb Sandbox) Sandbox {
	sb.CreatedAt, _ = parseTime(fmtTime(sb.CreatedAt))
	sb.UpdatedAt, _ = parseTime(fmtTime(sb.UpdatedAt))
	return sb
}

// DeleteSandbox removes the sandbox row; ErrNotFound when absent. Its
// journal and lease rows are separate and are not touched.
func (s *Store) DeleteSandbox(ctx context.Context, id string) error {
	res, err := s.w.ExecContext(ctx, `DELETE FROM sandboxes WHERE id = ?`, id)
	if err != nil {
		return fmt.Errorf("delete sandbox %s: %w", id, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("delete sandbox %s: %w", id, ErrNotFound)
	}
	return nil
}

const opCols = `id, sandbox_id, op, step, state, detail, created_at, updated_at`

func validOpState(s string) bool {
	return s == OpIntent || s == OpDone || s == OpUndone || s == OpFailed
}

// AppendOp journals a step before it is acted on and returns its id. An
// empty State means OpIntent; timestamps are the store's.
func (s *Store) AppendOp(ctx context.Context, op Op) (int64, error) {
	if op.State == "" {
		op.State = OpIntent
	}
	if !validOpState(op.State) {
		return 0, fmt.Errorf("append op for sandbox %s: invalid state %q", op.SandboxID, op.State)
	}
	if op.SandboxID == "" || op.Op == "" || op.Step == "" {
		return 0, errors.New("append op: missing sandbox id, op or step")
	}
	now := fmtTime(s.now())
	var id int64
	err := s.w.QueryRowContext(ctx, `INSERT INTO sandbox_ops (sandbox_id, op, step, state, detail, created_at, updated_at)
		VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id`,
		op.SandboxID, op.Op, op.Step, op.State, op.Detail, now, now).Scan(&id)
	if err != nil {
		return 0, fmt.Errorf("append op %s/%s for sandbox %s: %w", op.Op, op.Step, op.SandboxID, err)
	}
	return id, nil
}

// SetOpState records the outcome of a journaled step; ErrNotFound when the
// op does not exist.
func (s *Store) SetOpState(ctx context.Context, opID int64, state, detail string) error {
	if !validOpState(state) {
		return fmt.Errorf("set op %d state: invalid state %q", opID, state)
	}
	res, err := s.w.ExecContext(ctx, `UPDATE sandbox_ops SET state = ?, detail = ?, updated_at = ? WHERE id = ?`,
		state, detail, fmtTime(s.now()), opID)
	if err != nil {
		return fmt.Errorf("set op %d state: %w", opID, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("set op %d state: %w", opID, ErrNotFound)
	}
	return nil
}

// ListOps returns the sandbox's journal in the order it was written.
func (s *Store) ListOps(ctx context.Context, sandboxID string) ([]Op, error) {
	ops, err := s.queryOps(ctx, `SELECT `+opCols+` FROM sandbox_ops WHERE sandbox_id = ? ORDER BY id`, sandboxID)
	if err != nil {
		return nil, fmt.Errorf("list ops of sandbox %s: %w", sandboxID, err)
	}
	return ops, nil
}

// OpenOps returns every op still in OpIntent, oldest first: after a crash
// these are the steps that may have half-happened.
func (s *Store) OpenOps(ctx context.Context) ([]Op, error) {
	ops, err := s.queryOps(ctx, `SELECT `+opCols+` FROM sandbox_ops WHERE state = ? ORDER BY id`, OpIntent)
	if err != nil {
		return nil, fmt.Errorf("list open ops: %w", err)
	}
	return ops, nil
}

func (s *Store) queryOps(ctx context.Context, q string, args ...any) ([]Op, error) {
	rows, err := s.r.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []Op{}
	for rows.Next() {
		var (
			op       Op
			cAt, uAt string
		)
		if err := rows.Scan(&op.ID, &op.SandboxID, &op.Op, &op.Step, &op.State, &op.Detail, &cAt, &uAt); err != nil {
			return nil, err
		}
		if op.CreatedAt, err = parseTime(cAt); err != nil {
			return nil, err
		}
		if op.UpdatedAt, err = parseTime(uAt); err != nil {
			return nil, err
		}
		out = append(out, op)
	}
	return out, rows.Err()
}

// OpRetention bounds the journal. Open steps (OpIntent) are always kept:
// they are what recovery reads after a crash.
type OpRetention struct {
	// PerSandbox keeps the newest closed steps of each sandbox, enough for
	// its last few operations.
	PerSandbox int
	// Gone keeps the closed steps of deleted sandboxes this long, and
	// GoneMax bounds how many are kept at all, newest first.
	Gone    time.Duration
	GoneMax int
}

// pruneBatch bounds one DELETE, so other writers wait for a batch, not for
// a whole backlog.
const pruneBatch = 500

// PruneOps deletes journal steps r does not keep and returns how many. What
// to delete is found on the read pool; the write connection only deletes
// rows by id, in batches. A closed step never reopens and sandbox ids are
// never reused, so what was found stays prunable.
func (s *Store) PruneOps(ctx context.Context, r OpRetention) (int64, error) {
	if r.PerSandbox < 1 || r.GoneMax < 0 || r.Gone < 0 {
		return 0, fmt.Errorf("prune ops: invalid retention %+v", r)
	}
	var ids []int64
	scan := func(q string, args []any, keep func(id int64, updated string) bool) error {
		rows, err := s.r.QueryContext(ctx, q, args...)
		if err != nil {
			return fmt.Errorf("prune ops: %w", err)
		}
		defer rows.Close()
		for rows.Next() {
			var (
				id      int64
				updated string
			)
			if err := rows.Scan(&id, &updated); err != nil {
				return fmt.Errorf("prune ops: %w", err)
			}
			if !keep(id, updated) {
				ids = append(ids, id)
			}
		}
		if err := rows.Err(); err != nil {
			return fmt.Errorf("prune ops: %w", err)
		}
		return nil
	}
	// Each sandbox's closed steps beyond its newest PerSandbox.
	err := scan(`SELECT id, '' FROM (
			SELECT id, row_number() OVER (PARTITION BY sandbox_id ORDER BY id DESC) AS rn
			FROM sandbox_ops WHERE state <> ?) ranked
		WHERE rn > ?`, []any{OpIntent, r.PerSandbox}, func(int64, string) bool { return false })
	if err != nil {
		return 0, err
	}
	// Deleted sandboxes' closed steps, newest first: the first GoneMax of
	// them while younger than the cutoff. (Steps already beyond a sandbox's
	// own cap were listed above; deleting an id twice is harmless.)
	cutoff, n := fmtTime(s.now().Add(-r.Gone)), 0
	err = scan(`SELECT o.id, o.updated_at FROM sandbox_ops o
		WHERE o.state <> ? AND NOT EXISTS (SELECT 1 FROM sandboxes s WHERE s.id = o.sandbox_id)
		ORDER BY o.id DESC`, []any{OpIntent}, func(_ int64, updated string) bool {
		n++
		return n <= r.GoneMax && updated >= cutoff
	})
	if err != nil {
		return 0, err
	}
	var total int64
	for len(ids) > 0 {
		batch := ids[:min(pruneBatch, len(ids))]
		ids = ids[len(batch):]
		res, err := s.w.ExecContext(ctx, `DELETE FROM sandbox_ops WHERE state <> ? AND id IN `+inList(len(batch)),
			append([]any{OpIntent}, int64Args(batch)...)...)
		if err != nil {
			return total, fmt.Errorf("prune ops: %w", err)
		}
		n, _ := res.RowsAffected()
		total += n
	}
	return total, nil
}

func int64Args(v []int64) []any {
	out := make([]any, len(v))
	for i, x := range v {
		out[i] = x
	}
	return out
}

// CountOps counts the journal's steps.
func (s *Store) CountOps(ctx context.Context) (int, error) {
	var n int
	if err := s.r.QueryRowContext(ctx, `SELECT count(*) FROM sandbox_ops`).Scan(&n); err != nil {
		return 0, fmt.Errorf("count ops: %w", err)
	}
	return n, nil
}

// PoolOwner owns the warm pool's sandboxes: booted for no one, claimed by
// a create (ClaimPooled). No user id can take this value: user ids are
// [a-z0-9] (ids.New) or "local".
const PoolOwner = "@pool"

// ClaimPooled hands the pooled sandbox id to a new owner in one
// transaction: it must still be the pool's and running (else a
// *ConflictError: another create, or the pool keeper, took it first), the
// owner's quotas must admit one more sandbox holding its disk (*QuotaError),
// and mutate sets the owner, name and labels. The row moves to creating; the
// caller's claim steps move it to running. A duplicate (owner, name) is
// ErrDuplicate. The host limit is not checked: the row already counts.
func (s *Store) ClaimPooled(ctx context.Context, id string, q Quotas, owner string, mutate func(*Sandbox)) (Sandbox, error) {
	if owner == "" || owner == PoolOwner {
		return Sandbox{}, fmt.Errorf("claim sandbox %s: invalid owner %q", id, owner)
	}
	var out Sandbox
	err := s.tx(ctx, func(tx *sql.Tx) error {
		cur, err := getSandboxTx(ctx, tx, id)
		if err != nil {
			return err
		}
		if cur.OwnerID != PoolOwner || cur.Status != StatusRunning {
			return &ConflictError{ID: id, Current: cur.Status, To: StatusCreating}
		}
		if err := checkQuotas(ctx, tx, owner, q, true, true, cur.DiskBytes); err != nil {
			return err
		}
		out, err = s.updateTx(ctx, tx, cur, func(x *Sandbox) {
			if mutate != nil {
				mutate(x)
			}
			x.OwnerID = owner
		}, StatusCreating)
		return err
	})
	if err != nil {
		var ce *ConflictError
		if errors.As(err, &ce) {
			return Sandbox{}, err
		}
		return Sandbox{}, fmt.Errorf("claim sandbox %s: %w", id, err)
	}
	return out, nil
}

// TransitionOwned is Transition (no limits) that also requires the row to
// belong to owner: the pool keeper retires only sandboxes still the pool's,
// never one a create claimed a moment before (*ConflictError).
func (s *Store) TransitionOwned(ctx context.Context, id, owner string, from []Status, to Status) (Sandbox, error) {
	var out Sandbox
	err := s.tx(ctx, func(tx *sql.Tx) error {
		cur, err := getSandboxTx(ctx, tx, id)
		if err != nil {
			return err
		}
		if cur.OwnerID != owner || !slices.Contains(from, cur.Status) {
			return &ConflictError{ID: id, Current: cur.Status, To: to}
		}
		out, err = s.updateTx(ctx, tx, cur, nil, to)
		return err
	})
	if err != nil {
		var ce *ConflictError
		if errors.As(err, &ce) {
			return Sandbox{}, err
		}
		return Sandbox{}, fmt.Errorf("transition sandbox %s to %s: %w", id, to, err)
	}
	return out, nil
}
