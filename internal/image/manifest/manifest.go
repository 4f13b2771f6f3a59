// Package manifest is the contract between an image and the two programs
// that read it: the agent at boot (which services to start, as whom, where)
// and the host at import (size, versions, services, shown by /api/images).
// It lives inside the image at Path, written by the image builder.
package manifest

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path"
	"regexp"
	"sort"
	"strings"

	"atelier/internal/agent"
)

// Path is where the manifest lives inside an image's root filesystem.
const Path = "/etc/atelier/image.json"

// Schema is the manifest format version this code reads and writes.
const Schema = 1

// Roles name the services the edge routes tool hosts to: sandbox-{id}
// (vscode), opencode-{id} and browser-{id}. Their ports come from the
// host's config (advanced.vm.*) at boot, not from the image.
const (
	RoleVSCode   = "vscode"
	RoleOpenCode = "opencode"
	RoleBrowser  = "browser"
)

// Manifest describes an image.
type Manifest struct {
	Schema int `json:"schema"`
	// ID is the image id (images/<id>/ recipe, image-<id> volume).
	ID string `json:"id"`
	// Base is the image this one was built on, if any.
	Base string `json:"base,omitempty"`
	// Built is when the image was built (RFC 3339).
	Built string `json:"built,omitempty"`
	// Recipe is a digest of the recipe inputs, to tell a stale image.
	Recipe string `json:"recipe,omitempty"`
	// User and Workdir are the default unix user and working directory for
	// sessions (SSH, terminals, services without their own).
	User    string `json:"user"`
	Workdir string `json:"workdir"`
	// Versions of the tools the image carries (node, code-server, ...).
	Versions map[string]string `json:"versions,omitempty"`
	// Services the agent supervises.
	Services []Service `json:"services,omitempty"`
}

// Service is one supervised program of the image.
type Service struct {
	Name string `json:"name"`
	// Role ties the service to a tool host; empty for others.
	Role string `json:"role,omitempty"`
	// Autostart: started at boot. Services without it start on demand
	// (the browser stack costs memory).
	Autostart bool `json:"autostart,omitempty"`
	// Process is what to run; Process.Port is the default port, which the
	// host's config overrides for services with a role. The agent replaces
	// ${PORT} in argv, shell and env values with the port in effect (and
	// exports PORT), runs it as User and in Workdir when the process names
	// none, and keeps it to Process.Restart. A service that is several
	// programs (the browser: Xvnc, a window manager, Chromium, websockify)
	// is one supervisor script that starts them in its process group and
	// exits when any of them does, so the restart policy restarts the
	// whole stack and a stop ends all of it.
	Process agent.ProcessSpec `json:"process"`
	// Health says when the service is ready.
	Health *Health `json:"health,omitempty"`
}

// Health is a readiness probe: an HTTP GET answering < 500 on Path, or,
// without Path, a TCP connect to the service's port.
type Health struct {
	Path string `json:"path,omitempty"`
	// TimeoutMs bounds how long a start waits for readiness.
	TimeoutMs int `json:"timeoutMs,omitempty"`
}

var (
	idRE   = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
	userRE = regexp.MustCompile(`^[a-z_][a-z0-9_-]{0,30}$`)
)

// Validate reports every problem with m, each naming its field.
func (m *Manifest) Validate() error {
	var errs []error
	bad := func(field, format string, a ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", field, fmt.Sprintf(format, a...)))
	}
	if m.Schema != Schema {
		bad("schema", "must be %d (got %d)", Schema, m.Schema)
	}
	if !idRE.MatchString(m.ID) {
		bad("id", "must be a DNS label (got %q)", m.ID)
	}
	if m.Base != "" && !idRE.MatchString(m.Base) {
		bad("base", "must be a DNS label (got %q)", m.Base)
	}
	if !userRE.MatchString(m.User) {
		bad("user", "must be a unix user name (got %q)", m.User)
	}
	if !path.IsAbs(m.Workdir) || path.Clean(m.Workdir) != m.Workdir {
		bad("workdir", "must be a clean absolute path (got %q)", m.Workdir)
	}
	names, roles := map[string]bool{}, map[string]bool{}
	for i, s := range m.Services {
		f := fmt.Sprintf("services[%d]", i)
		if !idRE.MatchString(s.Name) {
			bad(f+".name", "must be a DNS label (got %q)", s.Name)
		}
		if names[s.Name] {
			bad(f+".name", "%q appears twice", s.Name)
		}
		names[s.Name] = true
		switch s.Role {
		case "", RoleVSCode, RoleOpenCode, RoleBrowser:
		default:
			bad(f+".role", "must be vscode, opencode, browser or empty (got %q)", s.Role)
		}
		if s.Role != "" {
			if roles[s.Role] {
				bad(f+".role", "%q is taken by another service", s.Role)
			}
			roles[s.Role] = true
		}
		if len(s.Process.Argv) == 0 && s.Process.Shell == "" {
			bad(f+".process", "needs argv or shell")
		}
		if s.Process.Port < 0 || s.Process.Port > 65535 {
			bad(f+".process.port", "must be in [0, 65535]")
		}
		if s.Health != nil {
			if s.Health.Path != "" && !strings.HasPrefix(s.Health.Path, "/") {
				bad(f+".health.path", "must start with / (got %q)", s.Health.Path)
			}
			if s.Health.TimeoutMs < 0 {
				bad(f+".health.timeoutMs", "must not be negative")
			}
			if s.Health.Path == "" && s.Process.Port == 0 {
				bad(f+".health", "a TCP check needs process.port")
			}
		}
	}
	return errors.Join(errs...)
}

// Service returns the service with the given role, if any.
func (m *Manifest) ServiceByRole(role string) (Service, bool) {
	for _, s := range m.Services {
		if s.Role == role {
			return s, true
		}
	}
	return Service{}, false
}

// Parse decodes and validates a manifest; unknown fields are errors, so a
// typo in a recipe is caught at build time, not at boot.
func Parse(b []byte) (*Manifest, error) {
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	var m Manifest
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("decode image manifest: %w", err)
	}
	if err := m.Validate(); err != nil {
		return nil, fmt.Errorf("invalid image manifest: %w", err)
	}
	return &m, nil
}

// Read parses the manifest at path (inside a mounted root, prefix it).
func Read(file string) (*Manifest, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("read image manifest: %w", err)
	}
	return Parse(b)
}

// Marshal encodes m (validated) with sorted, stable output.
func (m *Manifest) Marshal() ([]byte, error) {
	if err := m.Validate(); err != nil {
		return nil, err
	}
	c := *m
	c.Services = append([]Service(nil), m.Services...)
	sort.SliceStable(c.Services, func(i, j int) bool { return c.Services[i].Name < c.Services[j].Name })
	return json.MarshalIndent(&c, "", "  ")
}
