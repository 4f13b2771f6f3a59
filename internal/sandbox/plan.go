package sandbox

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"atelier/internal/revert"
	"atelier/internal/store"
)

// plan is one journaled multi-step operation on one sandbox.
type plan struct {
	s   *Service
	ctx context.Context // for acting; a destroy cancels it
	bg  context.Context // for the journal and undo: never cancelled
	id  string
	op  string
	log *slog.Logger
	rev *revert.Reverter

	timings map[string]float64
	// addressInUse: undoing the guest or its link failed, so the guest may
	// still answer on its address and the lease must be kept.
	addressInUse bool
	// released: the lease has been released by this plan.
	released bool
	// prov is how a create provisions its workspace.
	prov ProvisionMode
}

func (s *Service) newPlan(ctx context.Context, id, op string) *plan {
	return &plan{
		s: s, ctx: ctx, bg: context.WithoutCancel(ctx), id: id, op: op,
		log:     s.log.With("sandbox_id", id, "op", op),
		rev:     revert.New(),
		timings: map[string]float64{},
	}
}

// step journals the intent, acts, and records done (with act's detail) or
// failed. undo, when given, is registered even when act fails: a step that
// failed half-way may have left something, and every undo treats "already
// gone" as success.
func (p *plan) step(name, detail string, act func(context.Context) (string, error), undo func(context.Context) error) error {
	if err := p.ctx.Err(); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	opID, err := p.s.st.AppendOp(p.bg, store.Op{SandboxID: p.id, Op: p.op, Step: name, State: store.OpIntent, Detail: detail})
	if err != nil {
		return fmt.Errorf("%s: journal: %w", name, err)
	}
	crashPoint(p.op, name, "before")
	begin := time.Now()
	out, err := act(p.ctx)
	p.timings[name] = ms(time.Since(begin))
	crashPoint(p.op, name, "after")
	state, note := store.OpDone, out
	if err != nil {
		state, note = store.OpFailed, err.Error()
	}
	p.setOp(opID, state, note)
	if undo != nil {
		p.rev.Add(func() error {
			if uerr := undo(p.bg); uerr != nil {
				p.setOp(opID, state, "undo failed: "+uerr.Error())
				return fmt.Errorf("undo %s: %w", name, uerr)
			}
			if state == store.OpDone {
				p.setOp(opID, store.OpUndone, note)
			}
			return nil
		})
	}
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}

// CrashHook, when set, is called around every journaled step with the
// operation, the step and "before" or "after" its action. It exists only for
// the fault-injection tests, which kill the manager there with SIGKILL;
// production never sets it.
var CrashHook func(op, step, when string)

func crashPoint(op, step, when string) {
	if CrashHook != nil {
		CrashHook(op, step, when)
	}
}

func (p *plan) setOp(opID int64, state, detail string) {
	if err := p.s.st.SetOpState(p.bg, opID, state, detail); err != nil {
		p.log.Warn("journal op state", "op_id", opID, "state", state, "err", err)
	}
}

// guarded marks the address as possibly in use when undoing the guest or
// its link fails.
func (p *plan) guarded(undo func(context.Context) error) func(context.Context) error {
	return func(ctx context.Context) error {
		err := undo(ctx)
		if err != nil {
			p.addressInUse = true
		}
		return err
	}
}
