package workspace

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	"atelier/internal/github"
	"atelier/internal/sandbox"
	"atelier/internal/secretbox"
	"atelier/internal/store"
)

// Workspace is a workspace as shown to its owner: secrets by name only.
type Workspace struct {
	ID          string           `json:"id"`
	OwnerID     string           `json:"ownerId"`
	Name        string           `json:"name"`
	Config      Config           `json:"config"`
	SecretEnv   []string         `json:"secretEnv" doc:"Names of the secret variables; values are never returned."`
	SecretFiles []SecretFileInfo `json:"secretFiles" doc:"Paths of the secret files; contents are never returned."`
	CreatedAt   time.Time        `json:"createdAt"`
	UpdatedAt   time.Time        `json:"updatedAt"`
}

// SecretFileInfo names a secret file without its content.
type SecretFileInfo struct {
	Path string `json:"path"`
	Mode string `json:"mode"`
}

// Secrets are a workspace's opened secrets, for provisioning only.
type Secrets struct {
	Env   map[string]string
	Files []OpenFile
}

// OpenFile is a secret file with its content.
type OpenFile struct {
	Path    string
	Mode    int
	Content []byte
}

// Change is an update: nil fields are kept. Config replaces the whole
// config (never a merge of stale halves); SecretEnv and SecretFiles add or
// replace; DeleteSecrets removes by variable name or file path.
type Change struct {
	Name          *string
	Config        *Config
	SecretEnv     map[string]string
	SecretFiles   []SecretFile
	DeleteSecrets []string
}

// Service stores workspaces with their secrets sealed by box.
type Service struct {
	st  *store.Store
	box *secretbox.Box
	log *slog.Logger
	gh  *github.Client // nil: no GitHub API (repository listing)
	app *github.App    // nil: no GitHub App configured
	now func() time.Time

	appMu      sync.Mutex
	appChecked map[string]time.Time // owner/installation -> when its account was last found theirs
}

// New returns the workspace service.
func New(st *store.Store, box *secretbox.Box, log *slog.Logger) *Service {
	if log == nil {
		log = slog.Default()
	}
	return &Service{st: st, box: box, log: log, now: time.Now, appChecked: map[string]time.Time{}}
}

// aad binds a sealed secret to its workspace, kind and name: a value copied
// to another row, or another workspace, does not open.
func aad(wsID, kind, name string) []byte {
	return []byte("workspace-secret\x00" + wsID + "\x00" + kind + "\x00" + name)
}

func checkName(name string) (string, error) {
	name = strings.TrimSpace(name)
	if name == "" || len(name) > MaxNameLen || strings.ContainsAny(name, "\x00\r\n") {
		return "", fieldErr("name", "must be 1-%d characters on one line", MaxNameLen)
	}
	return name, nil
}

// plainSecrets validates secrets to store, unsealed yet.
func plainSecrets(env map[string]string, files []SecretFile) ([]store.WorkspaceSecret, map[string][]byte, error) {
	if len(env)+len(files) > MaxSecrets {
		return nil, nil, fieldErr("secretEnv", "at most %d secrets in one request", MaxSecrets)
	}
	var out []store.WorkspaceSecret
	values := map[string][]byte{}
	names := make([]string, 0, len(env))
	for k := range env {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		if err := checkSecretName("secretEnv."+k, k); err != nil {
			return nil, nil, err
		}
		v := env[k]
		if len(v) > MaxValueLen || strings.ContainsRune(v, 0) {
			return nil, nil, fieldErr("secretEnv."+k, "must be at most %d bytes without NUL", MaxValueLen)
		}
		out = append(out, store.WorkspaceSecret{Kind: store.SecretEnv, Name: k})
		values[store.SecretEnv+"\x00"+k] = []byte(v)
	}
	seen := map[string]bool{}
	for i, f := range files {
		field := fmt.Sprintf("secretFiles[%d]", i)
		if err := checkSecretPath(field+".path", f.Path); err != nil {
			return nil, nil, err
		}
		if seen[f.Path] {
			return nil, nil, fieldErr(field+".path", "%s is given twice", f.Path)
		}
		seen[f.Path] = true
		if len(f.Content) > MaxFileSecret {
			return nil, nil, fieldErr(field+".content", "must be at most %d bytes", MaxFileSecret)
		}
		mode, err := parseMode(field+".mode", f.Mode)
		if err != nil {
			return nil, nil, err
		}
		out = append(out, store.WorkspaceSecret{Kind: store.SecretFile, Name: f.Path, Mode: mode})
		values[store.SecretFile+"\x00"+f.Path] = []byte(f.Content)
	}
	return out, values, nil
}

func (s *Service) sealer(values map[string][]byte) func(id string, sec *store.WorkspaceSecret) error {
	return func(id string, sec *store.WorkspaceSecret) error {
		sealed, err := s.box.Seal(values[sec.Kind+"\x00"+sec.Name], aad(id, sec.Kind, sec.Name))
		if err != nil {
			return fmt.Errorf("seal secret %s: %w", sec.Name, err)
		}
		sec.Sealed = sealed
		return nil
	}
}

// Create validates and stores a new workspace of owner.
func (s *Service) Create(ctx context.Context, owner, name string, cfg Config, env map[string]string, files []SecretFile) (Workspace, error) {
	name, err := checkName(name)
	if err != nil {
		return Workspace{}, err
	}
	if err := cfg.Normalize(); err != nil {
		return Workspace{}, inConfig(err)
	}
	secs, values, err := plainSecrets(env, files)
	if err != nil {
		return Workspace{}, err
	}
	raw, err := json.Marshal(cfg)
	if err != nil {
		return Workspace{}, fmt.Errorf("encode workspace config: %w", err)
	}
	w, err := s.st.CreateWorkspace(ctx, store.Workspace{OwnerID: owner, Name: name, Config: raw}, secs, s.sealer(values))
	if err != nil {
		return Workspace{}, err
	}
	s.log.InfoContext(ctx, "workspace created", "workspace_id", w.ID, "owner_id", owner, "repos", len(cfg.Repos), "secrets", len(secs))
	return s.Get(ctx, w.ID)
}

// inConfig names a config field as the request body does: config.repos[0].url.
func inConfig(err error) error {
	var fe *sandbox.FieldError
	if errors.As(err, &fe) {
		return &sandbox.FieldError{Field: "config." + fe.Field, Message: fe.Message}
	}
	return err
}

// Update applies ch to workspace id.
func (s *Service) Update(ctx context.Context, id string, ch Change) (Workspace, error) {
	var sc store.WorkspaceChange
	if ch.Name != nil {
		name, err := checkName(*ch.Name)
		if err != nil {
			return Workspace{}, err
		}
		sc.Name = name
	}
	if ch.Config != nil {
		if err := ch.Config.Normalize(); err != nil {
			return Workspace{}, inConfig(err)
		}
		raw, err := json.Marshal(ch.Config)
		if err != nil {
			return Workspace{}, fmt.Errorf("encode workspace config: %w", err)
		}
		sc.Config = raw
	}
	secs, values, err := plainSecrets(ch.SecretEnv, ch.SecretFiles)
	if err != nil {
		return Workspace{}, err
	}
	seal := s.sealer(values)
	for i := range secs {
		if err := seal(id, &secs[i]); err != nil {
			return Workspace{}, err
		}
	}
	sc.Put = secs
	for i, n := range ch.DeleteSecrets {
		kind := store.SecretEnv
		if strings.HasPrefix(n, "/") || strings.HasPrefix(n, "~/") {
			kind = store.SecretFile
		} else if err := checkSecretName(fmt.Sprintf("deleteSecrets[%d]", i), n); err != nil {
			return Workspace{}, err
		}
		sc.Delete = append(sc.Delete, store.WorkspaceSecret{Kind: kind, Name: n})
	}
	if _, err := s.st.UpdateWorkspace(ctx, id, sc); err != nil {
		return Workspace{}, err
	}
	s.log.InfoContext(ctx, "workspace updated", "workspace_id", id, "secrets_set", len(secs), "secrets_deleted", len(sc.Delete))
	return s.Get(ctx, id)
}

// Get returns one workspace; store.ErrNotFound when absent.
func (s *Service) Get(ctx context.Context, id string) (Workspace, error) {
	w, err := s.st.GetWorkspace(ctx, id)
	if err != nil {
		return Workspace{}, err
	}
	return s.view(ctx, w)
}

// List returns owner's workspaces ("" for all).
func (s *Service) List(ctx context.Context, owner string) ([]Workspace, error) {
	list, err := s.st.ListWorkspaces(ctx, owner)
	if err != nil {
		return nil, err
	}
	out := make([]Workspace, 0, len(list))
	for _, w := range list {
		v, err := s.view(ctx, w)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, nil
}

// Delete removes a workspace none of whose sandboxes remain
// (*store.InUseError otherwise).
func (s *Service) Delete(ctx context.Context, id string) error {
	if err := s.st.DeleteWorkspace(ctx, id); err != nil {
		return err
	}
	s.log.InfoContext(ctx, "workspace deleted", "workspace_id", id)
	return nil
}

func (s *Service) view(ctx context.Context, w store.Workspace) (Workspace, error) {
	v := Workspace{ID: w.ID, OwnerID: w.OwnerID, Name: w.Name, CreatedAt: w.CreatedAt, UpdatedAt: w.UpdatedAt,
		SecretEnv: []string{}, SecretFiles: []SecretFileInfo{}}
	if err := json.Unmarshal(w.Config, &v.Config); err != nil {
		return Workspace{}, fmt.Errorf("decode workspace %s config: %w", w.ID, err)
	}
	_ = v.Config.Normalize() // fills nil lists of rows written by older versions
	secs, err := s.st.WorkspaceSecrets(ctx, w.ID)
	if err != nil {
		return Workspace{}, err
	}
	for _, sec := range secs {
		if sec.Kind == store.SecretEnv {
			v.SecretEnv = append(v.SecretEnv, sec.Name)
		} else {
			v.SecretFiles = append(v.SecretFiles, SecretFileInfo{Path: sec.Name, Mode: fmt.Sprintf("%04o", sec.Mode)})
		}
	}
	return v, nil
}

// OpenSecrets opens the workspace's secrets for provisioning a sandbox. A
// value that does not open (another host's key) is an error, never an
// empty secret silently delivered.
func (s *Service) OpenSecrets(ctx context.Context, id string) (Secrets, error) {
	secs, err := s.st.WorkspaceSecrets(ctx, id)
	if err != nil {
		return Secrets{}, err
	}
	out := Secrets{Env: map[string]string{}}
	for _, sec := range secs {
		pt, err := s.box.Open(sec.Sealed, aad(id, sec.Kind, sec.Name))
		if err != nil {
			if errors.Is(err, secretbox.ErrOpen) {
				return Secrets{}, fmt.Errorf("workspace %s secret %s: %w (was %s replaced?)", id, sec.Name, err, secretbox.KeyFile)
			}
			return Secrets{}, err
		}
		if sec.Kind == store.SecretEnv {
			out.Env[sec.Name] = string(pt)
		} else {
			out.Files = append(out.Files, OpenFile{Path: sec.Name, Mode: sec.Mode, Content: pt})
		}
	}
	return out, nil
}
