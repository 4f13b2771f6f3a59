package server

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"atelier/internal/sandbox"
)

func TestPolicyCheckStates(t *testing.T) {
	for _, c := range []struct {
		name     string
		enforced bool
		err      error
		allow    bool
		state    string
		refused  bool
	}{
		{name: "enforced", enforced: true, state: policyEnforced},
		{name: "not enforced", state: policyNotEnforced, refused: true},
		{name: "not enforced, allowed", allow: true, state: policyNotEnforced},
		{name: "check failed", err: errors.New("image pull"), state: policyUnknown},
	} {
		t.Run(c.name, func(t *testing.T) {
			ctx := context.Background()
			release := make(chan struct{})
			p := newPolicyCheck(func(context.Context) (bool, error) { <-release; return c.enforced, c.err }, c.allow, slog.New(slog.DiscardHandler))
			done := make(chan struct{})
			go func() { defer close(done); p.run(ctx) }()
			// While the check runs nothing is refused.
			if st, _ := p.report(); st != policyChecking || p.admit(ctx) != nil {
				t.Fatalf("while checking: %s %v", st, p.admit(ctx))
			}
			close(release)
			<-done
			st, detail := p.report()
			if st != c.state {
				t.Fatalf("state %s, want %s", st, c.state)
			}
			if c.err != nil && !strings.Contains(detail, c.err.Error()) {
				t.Fatalf("detail %q does not say why the check failed", detail)
			}
			err := p.admit(ctx)
			if c.refused != (err != nil) {
				t.Fatalf("admit: %v, refused want %v", err, c.refused)
			}
			if err != nil && (!errors.Is(err, sandbox.ErrUnavailable) || !strings.Contains(err.Error(), "sandbox.kubernetes.allowUnenforcedPolicies")) {
				t.Fatalf("refusal %q: not ErrUnavailable naming the key", err)
			}
		})
	}
}
