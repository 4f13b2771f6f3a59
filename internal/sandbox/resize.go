package sandbox

import (
	"context"
	"errors"
	"fmt"

	"atelier/internal/events"
	"atelier/internal/store"
)

// OpResize is the journal's name for growing a sandbox's disk; its steps are
// StepVolume (the driver grows the volume), StepRow (the new size is
// recorded, counted against the disk quota) and StepGrow (the filesystem
// grows into it, for a running guest).
const (
	OpResize = "resize"
	StepGrow = "grow"
)

// Resizer grows a sandbox's volume: storage/file, storage/lvm, storage/pool
// and the mock all do. Growing to the current size is success; shrinking is
// refused.
type Resizer interface {
	Resize(ctx context.Context, id string, sizeBytes int64) error
}

// DiskGrower is a runtime that grows a running guest's root filesystem
// into its grown volume. A stopped guest needs nothing: every runtime grows
// the filesystem to its device at boot.
type DiskGrower interface {
	GrowDisk(ctx context.Context, id string) error
}

// ErrNoResize: the volume driver cannot grow volumes.
var ErrNoResize = errors.New("the volume driver cannot grow volumes")

// ErrGrowOffline: the runtime cannot grow a running guest's filesystem; the
// sandbox must be stopped to be resized.
var ErrGrowOffline = errors.New("this runtime grows a disk only while the sandbox is stopped: stop it first")

// ErrGrowAtRestart: the volume grew and the row says so, but the running
// guest's filesystem did not grow online; it grows at the next boot.
var ErrGrowAtRestart = errors.New("the disk grew, but its filesystem grows only when the sandbox restarts")

// Resize grows the sandbox's disk to sizeBytes: only up, and within the
// owner's disk quota (the new size counts instead of the old). A running
// sandbox's filesystem is grown online by its runtime; a stopped one's at
// its next boot. Each step is journaled and idempotent, so a retry after a
// failure (or the same size again) finishes the job.
func (s *Service) Resize(ctx context.Context, id string, sizeBytes int64) (store.Sandbox, error) {
	rz, ok := s.drv.Volumes.(Resizer)
	if !ok {
		return store.Sandbox{}, fmt.Errorf("resize sandbox %s: %w", id, ErrNoResize)
	}
	unlock, err := s.locks.Lock(ctx, id)
	if err != nil {
		return store.Sandbox{}, fmt.Errorf("resize sandbox %s: %w", id, err)
	}
	defer unlock()
	sb, err := s.st.GetSandbox(ctx, id)
	if err != nil {
		return sb, fmt.Errorf("resize sandbox %s: %w", id, err)
	}
	if sb.Status != store.StatusRunning && sb.Status != store.StatusStopped {
		return sb, &store.ConflictError{ID: id, Current: sb.Status, To: sb.Status}
	}
	// The same size is allowed: it retries a resize whose last step failed.
	if sizeBytes < sb.DiskBytes {
		return sb, &FieldError{Field: "sizeGb", Message: fmt.Sprintf("must be at least the disk's current %g GiB: disks only grow", float64(sb.DiskBytes)/(1<<30))}
	}
	if q := s.limits().Quotas.DiskBytes; q > 0 {
		u, err := s.st.OwnerUsage(ctx, sb.OwnerID)
		if err != nil {
			return sb, fmt.Errorf("resize sandbox %s: %w", id, err)
		}
		if more := sizeBytes - sb.DiskBytes; u.DiskBytes+more > q {
			return sb, &store.QuotaError{Quota: store.QuotaDisk, Limit: q, Used: u.DiskBytes, Requested: more}
		}
	}
	var grower DiskGrower
	if sb.Status == store.StatusRunning {
		if grower, ok = s.drv.Runtime.(DiskGrower); !ok {
			return sb, fmt.Errorf("resize sandbox %s: %w", id, ErrGrowOffline)
		}
	}
	bg := context.WithoutCancel(ctx)
	p := s.newPlan(bg, id, OpResize)
	detail := fmt.Sprintf("%d bytes", sizeBytes)
	if err := p.step(StepVolume, detail, func(ctx context.Context) (string, error) {
		return "", rz.Resize(ctx, id, sizeBytes)
	}, nil); err != nil {
		return sb, fmt.Errorf("resize sandbox %s: %w", id, err)
	}
	if err := p.step(StepRow, detail, func(ctx context.Context) (string, error) {
		sb, err = s.st.UpdateSandbox(ctx, id, func(x *store.Sandbox) { x.DiskBytes = sizeBytes })
		return "", err
	}, nil); err != nil {
		return sb, fmt.Errorf("resize sandbox %s: %w", id, err)
	}
	if grower != nil {
		if err := p.step(StepGrow, "", func(ctx context.Context) (string, error) {
			return "", grower.GrowDisk(ctx, id)
		}, nil); err != nil {
			// The volume is grown and recorded; the next boot grows the
			// filesystem, and a resize to the same size tries again now.
			s.log.WarnContext(ctx, "sandbox disk grown, filesystem not grown online", "sandbox_id", id, "err", err)
			return sb, fmt.Errorf("resize sandbox %s: %w: %w", id, ErrGrowAtRestart, err)
		}
	}
	s.log.InfoContext(ctx, "sandbox disk grown", "sandbox_id", id, "size_bytes", sizeBytes, "online", grower != nil)
	s.publish(bg, events.SandboxUpdated, sb)
	return sb, nil
}
