package sandbox

import (
	"context"
	"fmt"

	"atelier/internal/agent"
	"atelier/internal/store"
)

// Provisioner sets up sandboxes of a workspace (package workspace). The
// lifecycle knows nothing of workspaces beyond this.
type Provisioner interface {
	// Prepare checks, before a sandbox is created, that req.OwnerID may use
	// req.WorkspaceID (a *FieldError on workspaceId otherwise, never a
	// sandbox provisioned with another user's secrets) and fills what the
	// request leaves to the workspace (image, vCPUs, memory).
	Prepare(ctx context.Context, req *CreateRequest) error
	// Steps are the create steps that provision sb through its agent, run
	// in order as journaled steps after the agent answers and before the
	// sandbox is marked running.
	Steps(ctx context.Context, sb store.Sandbox) ([]ProvisionStep, error)
}

// ProvisionStep is one journaled create step. Undo, when set, is run if a
// later step fails (the guest itself is destroyed anyway: Undo is for
// what lives outside it, such as edge routes).
type ProvisionStep struct {
	Name   string
	Detail string
	Run    func(ctx context.Context, c *agent.Client) (string, error)
	Undo   func(ctx context.Context) error
}

// SetProvisioner installs the workspace provisioner; nil leaves
// workspaceId a label.
func (s *Service) SetProvisioner(p Provisioner) { s.prov.Store(&p) }

func (s *Service) provisioner() Provisioner {
	if p := s.prov.Load(); p != nil {
		return *p
	}
	return nil
}

// provision runs the workspace's steps for a new sandbox.
func (s *Service) provision(p *plan, sb store.Sandbox) error {
	prov := s.provisioner()
	if prov == nil || sb.WorkspaceID == "" {
		return nil
	}
	var steps []ProvisionStep
	if err := p.step(StepWorkspace, sb.WorkspaceID, func(ctx context.Context) (string, error) {
		var err error
		steps, err = prov.Steps(ctx, sb)
		return fmt.Sprintf("%d steps", len(steps)), err
	}, nil); err != nil {
		return err
	}
	c := s.pooledAgent(sb.ID)
	for _, st := range steps {
		if err := p.step(st.Name, st.Detail, func(ctx context.Context) (string, error) { return st.Run(ctx, c) }, st.Undo); err != nil {
			return err
		}
	}
	return nil
}
