package guest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"

	"atelier/internal/agent"
)

// loadConfigID reads the sandbox id from a config stored by a previous
// agent run, so /health is right straight after an agent restart.
func (s *Server) loadConfigID() {
	b, err := os.ReadFile(s.opts.ConfigPath)
	if err != nil {
		return
	}
	s.rememberConfigID(b)
}

func (s *Server) rememberConfigID(b []byte) {
	var c struct {
		SandboxID string            `json:"sandboxId"`
		Env       map[string]string `json:"env"`
	}
	if json.Unmarshal(b, &c) != nil {
		return
	}
	if c.SandboxID != "" {
		s.cfgID.Store(c.SandboxID)
	}
	s.cfgEnv.Store(&c.Env)
}

// configEnv returns the stored config's variables under the request's own:
// what a caller asks for wins.
func (s *Server) configEnv(req map[string]string) map[string]string {
	p := s.cfgEnv.Load()
	if p == nil || len(*p) == 0 {
		return req
	}
	out := make(map[string]string, len(*p)+len(req))
	for k, v := range *p {
		out[k] = v
	}
	for k, v := range req {
		out[k] = v
	}
	return out
}

// sandboxID prefers the id of the stored config, which the host pushes
// after boot, over the one given at start.
func (s *Server) sandboxID() string {
	if v, ok := s.cfgID.Load().(string); ok && v != "" {
		return v
	}
	return s.opts.SandboxID
}

// putConfig is POST /config: any JSON value, stored atomically.
func (s *Server) putConfig(w http.ResponseWriter, r *http.Request) error {
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxJSONBody))
	if err != nil {
		return err
	}
	b = bytes.TrimSpace(b)
	if !json.Valid(b) {
		return errBadField("body", "must be valid JSON")
	}
	if err := atomicWrite(s.opts.ConfigPath, bytes.NewReader(b), 0o600, nil, true); err != nil {
		return fmt.Errorf("store config: %w", err)
	}
	s.rememberConfigID(b)
	return writeJSON(w, http.StatusOK, agent.ConfigAck{Path: s.opts.ConfigPath, Size: len(b)})
}

// getConfig is GET /config: the stored JSON verbatim, 404 when none.
func (s *Server) getConfig(w http.ResponseWriter, r *http.Request) error {
	b, err := os.ReadFile(s.opts.ConfigPath)
	if errors.Is(err, fs.ErrNotExist) {
		return errNotFound("no config stored")
	}
	if err != nil {
		return fmt.Errorf("read config: %w", err)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(b)
	return nil
}
