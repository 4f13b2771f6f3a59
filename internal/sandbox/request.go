package sandbox

import (
	"fmt"
	"regexp"

	"atelier/internal/config"
	"atelier/internal/ids"
)

// Bounds on a sandbox's resources: the config's, so a valid default is
// always a valid request.
const (
	MinVcpus    = config.MinVcpus
	MaxVcpus    = config.MaxVcpus
	MinMemoryMB = config.MinMemoryMB
	MaxMemoryMB = config.MaxMemoryMB

	// Fallbacks when the config leaves the defaults unset.
	fallbackVcpus    = 2
	fallbackMemoryMB = 2048
)

var imageRe = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)

// FieldError is a validation failure of one request field; Field is the JSON
// name, so the API can point at it.
type FieldError struct {
	Field   string
	Message string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Message }

// CreateRequest asks for a new sandbox. OwnerID is set by the caller from the
// authenticated principal, never from the request body.
type CreateRequest struct {
	OwnerID     string
	Name        string
	Image       string
	WorkspaceID string
	Vcpus       int
	MemoryMB    int
	// Mode is how the workspace provisions the sandbox: set by the
	// workspace's Provisioner.Prepare (FromPrebuild) or by the prebuild
	// runner (Build), never from a request body.
	Mode ProvisionMode
}

// Normalize fills defaults from cfg and validates every field; the error is
// a *FieldError naming the first bad field.
func (r *CreateRequest) Normalize(cfg *config.Config) error {
	if r.Image == "" {
		r.Image = cfg.Sandbox.DefaultImage
	}
	if r.Vcpus == 0 {
		r.Vcpus = cfg.Sandbox.DefaultVcpus
		if r.Vcpus == 0 {
			r.Vcpus = fallbackVcpus
		}
	}
	if r.MemoryMB == 0 {
		r.MemoryMB = cfg.Sandbox.DefaultMemoryMB
		if r.MemoryMB == 0 {
			r.MemoryMB = fallbackMemoryMB
		}
	}
	switch {
	case r.Vcpus < MinVcpus || r.Vcpus > MaxVcpus:
		return &FieldError{"vcpus", fmt.Sprintf("must be between %d and %d", MinVcpus, MaxVcpus)}
	case r.MemoryMB < MinMemoryMB || r.MemoryMB > MaxMemoryMB:
		return &FieldError{"memoryMb", fmt.Sprintf("must be between %d and %d", MinMemoryMB, MaxMemoryMB)}
	case r.Name != "" && !ids.ValidDNSLabel(r.Name):
		return &FieldError{"name", "must be a DNS label: up to 63 lowercase letters, digits and inner hyphens"}
	case !imageRe.MatchString(r.Image):
		return &FieldError{"image", "must match " + imageRe.String()}
	case r.WorkspaceID != "" && !ids.ValidSandboxID(r.WorkspaceID):
		return &FieldError{"workspaceId", "must be 12 characters [a-z0-9]"}
	}
	return nil
}
