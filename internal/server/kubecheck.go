package server

import (
	"context"
	"fmt"
	"log/slog"
	"sync"

	"atelier/internal/sandbox"
)

// States of the start-up check that the cluster's network enforces
// NetworkPolicies (the System page's firewall state on a cluster).
const (
	policyChecking    = "checking"
	policyEnforced    = "enforced"
	policyNotEnforced = "not-enforced"
	policyUnknown     = "unknown"
)

// policyCheck runs the kubernetes runtime's enforcement check once and
// holds its answer. Only a proven "not enforced" refuses boots: a check
// still running or one that failed (an API or image problem) does not
// take the manager out of service.
type policyCheck struct {
	check func(context.Context) (bool, error)
	allow bool // sandbox.kubernetes.allowUnenforcedPolicies
	log   *slog.Logger

	mu    sync.Mutex
	state string
	err   string
}

func newPolicyCheck(check func(context.Context) (bool, error), allow bool, log *slog.Logger) *policyCheck {
	return &policyCheck{check: check, allow: allow, log: log, state: policyChecking}
}

func (p *policyCheck) run(ctx context.Context) {
	enforced, err := p.check(ctx)
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case err != nil && ctx.Err() != nil:
		p.state, p.err = policyUnknown, "the manager stopped before the check ended"
	case err != nil:
		p.state, p.err = policyUnknown, err.Error()
		p.log.Warn("could not check that the cluster enforces NetworkPolicies: sandboxes run, their isolation unproven", "err", err)
	case enforced:
		p.state, p.err = policyEnforced, ""
		p.log.Info("the cluster's network enforces NetworkPolicies")
	default:
		p.state, p.err = policyNotEnforced, notEnforcedText
		if p.allow {
			p.log.Warn(notEnforcedText + "; sandboxes run anyway (sandbox.kubernetes.allowUnenforcedPolicies)")
		} else {
			p.log.Error(notEnforcedText + "; sandbox creates and starts are refused until it does, or sandbox.kubernetes.allowUnenforcedPolicies is set")
		}
	}
}

const notEnforcedText = "the cluster's network does not enforce NetworkPolicies: a sandbox's Pod reached another's, " +
	"so any user could open another's code-server"

// admit is the sandbox service's Admission.
func (p *policyCheck) admit(context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.state != policyNotEnforced || p.allow {
		return nil
	}
	return fmt.Errorf("%w: %s; use a network plugin that enforces them or set sandbox.kubernetes.allowUnenforcedPolicies",
		sandbox.ErrUnavailable, notEnforcedText)
}

// report is the state and, when not enforced or unknown, why.
func (p *policyCheck) report() (state, detail string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.state, p.err
}
