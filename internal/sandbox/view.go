package sandbox

import (
	"strconv"
	"strings"
	"time"

	"atelier/internal/config"
	"atelier/internal/store"
)

// View is the public JSON of a sandbox.
type View struct {
	ID          string             `json:"id" doc:"12 characters [a-z0-9]."`
	Name        string             `json:"name,omitempty"`
	OwnerID     string             `json:"ownerId"`
	WorkspaceID string             `json:"workspaceId,omitempty"`
	Image       string             `json:"image"`
	Status      store.Status       `json:"status" enum:"creating,running,stopping,stopped,starting,error,destroying"`
	Vcpus       int                `json:"vcpus"`
	MemoryMB    int                `json:"memoryMb"`
	DiskBytes   int64              `json:"diskBytes,omitempty" doc:"Virtual size of the root disk, counted against quotas.diskGbPerUser."`
	IPAddress   string             `json:"ipAddress,omitempty"`
	MACAddress  string             `json:"macAddress,omitempty"`
	URLs        *URLs              `json:"urls,omitempty" doc:"Present once the sandbox has been running."`
	Error       string             `json:"error,omitempty" doc:"Why the last operation failed, when status is error."`
	Timings     map[string]float64 `json:"timings,omitempty" doc:"Milliseconds per phase of the last create or start."`
	Services    []ServiceState     `json:"services,omitempty" doc:"The image's services while the sandbox runs, as its agent last reported them (at most a second old in one sandbox's GET; lists and events show the last states read)."`
	Pooled      bool               `json:"pooled,omitempty" doc:"A warm pool sandbox (sandbox.pool.size), booted for no one and waiting for a create to claim it; only admins see these."`
	CreatedAt   time.Time          `json:"createdAt"`
	UpdatedAt   time.Time          `json:"updatedAt"`
}

// URLs are where a sandbox's services are reached.
type URLs struct {
	VSCode   string `json:"vscode"`
	OpenCode string `json:"opencode"`
	Browser  string `json:"browser"`
	SSH      string `json:"ssh" doc:"The ssh command line, e.g. ssh <id>@ssh.example.com -p 2222."`
}

// View renders a sandbox for the API and events. Services come from the
// cache: a view never waits on an agent (see ViewFresh).
func (s *Service) View(sb store.Sandbox) View {
	v := newView(s.cfg, s.patterns, sb)
	if sb.Status == store.StatusRunning {
		v.Services = s.cachedServices(sb.ID)
	}
	return v
}

func newView(cfg *config.Config, patterns map[string]string, sb store.Sandbox) View {
	v := View{
		ID: sb.ID, Name: sb.Name, OwnerID: sb.OwnerID, WorkspaceID: sb.WorkspaceID, Image: sb.Image,
		Status: sb.Status, Vcpus: sb.Vcpus, MemoryMB: sb.MemoryMB, DiskBytes: sb.DiskBytes, IPAddress: sb.IP, MACAddress: sb.MAC,
		Error: sb.Error, Timings: sb.Timings, CreatedAt: sb.CreatedAt, UpdatedAt: sb.UpdatedAt, Pooled: sb.OwnerID == store.PoolOwner,
	}
	if hasRun(sb) {
		v.URLs = &URLs{
			VSCode:   expand(patterns["vscode"], sb.ID),
			OpenCode: expand(patterns["opencode"], sb.ID),
			Browser:  expand(patterns["browser"], sb.ID),
			SSH:      "ssh " + sb.ID + "@" + cfg.Domain.SSH.Hostname + " -p " + strconv.Itoa(cfg.Domain.SSH.Port),
		}
	}
	return v
}

// hasRun reports whether the sandbox has been running and still owns its
// address: the IP is recorded on the first move to running and cleared when
// the lease is released, so a sandbox whose create failed never shows URLs.
func hasRun(sb store.Sandbox) bool {
	if sb.IP == "" {
		return false
	}
	switch sb.Status {
	case store.StatusRunning, store.StatusStopping, store.StatusStopped, store.StatusStarting:
		return true
	}
	return false
}

func expand(pattern, id string) string {
	if pattern == "" {
		return ""
	}
	u := strings.ReplaceAll(pattern, "{id}", id)
	if !strings.Contains(u, "://") {
		u = "https://" + u
	}
	return u
}
