// Package guestfiles keeps the config files pushed into sandboxes (editor
// and OpenCode settings, say): a global set an admin manages and each
// workspace's own, merged (JSON objects deep, other files the workspace's
// wins) and written as the image user through the agent's file API. A push
// never overwrites a file the guest changed since the last push unless
// forced: the hash of what was last written is kept per sandbox and path.
package guestfiles

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"path"
	"sort"
	"strconv"
	"strings"

	"atelier/internal/agent"
	"atelier/internal/sandbox"
	"atelier/internal/store"
)

// Limits of one scope's set.
const (
	MaxFiles       = 64
	MaxContent     = 256 << 10
	defaultMode    = 0o644
	maxPathLen     = 512
	etcPrefix      = "/etc/"
	homePrefix     = "~/"
	pushTimeoutSec = 30
)

// File is one config file as the API shows it.
type File struct {
	Path    string `json:"path" maxLength:"512" doc:"~/... (the image user's home) or /etc/...; no .. or . segments."`
	Content string `json:"content" maxLength:"262144" doc:"The file's content (UTF-8). JSON files (.json) of both scopes are deep-merged."`
	Mode    string `json:"mode,omitempty" doc:"Octal permission bits; default 0644."`
}

// FieldError names the bad field of a set, as files[i].path.
type FieldError struct {
	Field   string
	Message string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Message }

// Validate checks a set and returns its store rows with modes parsed.
func Validate(files []File) ([]store.ConfigFile, error) {
	if len(files) > MaxFiles {
		return nil, &FieldError{Field: "files", Message: fmt.Sprintf("at most %d files", MaxFiles)}
	}
	seen := map[string]bool{}
	out := make([]store.ConfigFile, 0, len(files))
	for i, f := range files {
		field := fmt.Sprintf("files[%d]", i)
		if err := ValidPath(f.Path); err != nil {
			return nil, &FieldError{Field: field + ".path", Message: err.Error()}
		}
		if seen[f.Path] {
			return nil, &FieldError{Field: field + ".path", Message: "appears twice"}
		}
		seen[f.Path] = true
		if len(f.Content) > MaxContent {
			return nil, &FieldError{Field: field + ".content", Message: fmt.Sprintf("at most %d bytes", MaxContent)}
		}
		if strings.HasSuffix(f.Path, ".json") && !json.Valid([]byte(f.Content)) {
			return nil, &FieldError{Field: field + ".content", Message: "is not valid JSON (the path ends in .json)"}
		}
		mode := defaultMode
		if f.Mode != "" {
			m, err := strconv.ParseUint(f.Mode, 8, 32)
			if err != nil || m > 0o777 || m&0o400 == 0 {
				return nil, &FieldError{Field: field + ".mode", Message: "must be octal permission bits the owner can read, e.g. 0644"}
			}
			mode = int(m)
		}
		out = append(out, store.ConfigFile{Path: f.Path, Content: f.Content, Mode: mode})
	}
	return out, nil
}

// ValidPath accepts ~/rest (under the image user's home) or /etc/rest,
// clean: no "..", ".", empty segments or control characters.
func ValidPath(p string) error {
	if p == "" {
		return fmt.Errorf("is required")
	}
	if len(p) > maxPathLen {
		return fmt.Errorf("at most %d characters", maxPathLen)
	}
	var rest string
	switch {
	case strings.HasPrefix(p, homePrefix):
		rest = p[len(homePrefix):]
	case strings.HasPrefix(p, etcPrefix):
		rest = p[len(etcPrefix):]
	default:
		return fmt.Errorf("must start with ~/ (the image user's home) or /etc/")
	}
	for _, r := range p {
		if r < 0x20 || r == 0x7f {
			return fmt.Errorf("has a control character")
		}
	}
	if rest == "" || strings.HasSuffix(rest, "/") {
		return fmt.Errorf("must name a file")
	}
	for _, seg := range strings.Split(rest, "/") {
		if seg == "" || seg == "." || seg == ".." {
			return fmt.Errorf("must be clean: no empty, . or .. segments")
		}
	}
	return nil
}

// ToAPI turns store rows into the API's files.
func ToAPI(rows []store.ConfigFile) []File {
	out := make([]File, 0, len(rows))
	for _, r := range rows {
		out = append(out, File{Path: r.Path, Content: r.Content, Mode: fmt.Sprintf("%04o", r.Mode)})
	}
	return out
}

// Merge lays the workspace's files over the global ones: a path in both
// whose contents are both JSON objects is deep-merged (objects key by key,
// any other value the workspace's), any other the workspace's whole. The
// result is sorted by path.
func Merge(global, ws []store.ConfigFile) ([]store.ConfigFile, error) {
	byPath := map[string]store.ConfigFile{}
	for _, f := range global {
		byPath[f.Path] = f
	}
	for _, f := range ws {
		g, ok := byPath[f.Path]
		if ok && strings.HasSuffix(f.Path, ".json") {
			merged, isObj, err := mergeJSON([]byte(g.Content), []byte(f.Content))
			if err != nil {
				return nil, fmt.Errorf("merge %s: %w", f.Path, err)
			}
			if isObj {
				f.Content = merged
			}
		}
		byPath[f.Path] = f
	}
	out := make([]store.ConfigFile, 0, len(byPath))
	for _, f := range byPath {
		out = append(out, f)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out, nil
}

// mergeJSON deep-merges over onto base when both are objects; isObj false
// leaves the caller to take over whole.
func mergeJSON(base, over []byte) (string, bool, error) {
	var b, o any
	if err := json.Unmarshal(base, &b); err != nil {
		return "", false, err
	}
	if err := json.Unmarshal(over, &o); err != nil {
		return "", false, err
	}
	bm, ok1 := b.(map[string]any)
	om, ok2 := o.(map[string]any)
	if !ok1 || !ok2 {
		return "", false, nil
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(deepMerge(bm, om)); err != nil {
		return "", false, err
	}
	return buf.String(), true, nil
}

func deepMerge(base, over map[string]any) map[string]any {
	out := make(map[string]any, len(base)+len(over))
	for k, v := range base {
		out[k] = v
	}
	for k, v := range over {
		bm, ok1 := out[k].(map[string]any)
		om, ok2 := v.(map[string]any)
		if ok1 && ok2 {
			out[k] = deepMerge(bm, om)
			continue
		}
		out[k] = v
	}
	return out
}

// Hash is the hex SHA-256 of content, as kept per push.
func Hash(content []byte) string {
	h := sha256.Sum256(content)
	return hex.EncodeToString(h[:])
}

// Pusher is the sandbox.ConfigPusher of config files.
type Pusher struct {
	Store *store.Store
	// User owns the files and finds the home: the image user, or "" for
	// the agent's own user (mock mode).
	User string
	Log  *slog.Logger
}

var _ sandbox.ConfigPusher = (*Pusher)(nil)

// Files returns the merged set for a sandbox of workspaceID ("" none).
func (p *Pusher) Files(ctx context.Context, workspaceID string) ([]store.ConfigFile, error) {
	global, err := p.Store.ConfigFiles(ctx, "")
	if err != nil {
		return nil, err
	}
	var ws []store.ConfigFile
	if workspaceID != "" {
		if ws, err = p.Store.ConfigFiles(ctx, workspaceID); err != nil {
			return nil, err
		}
	}
	return Merge(global, ws)
}

// PushConfigFiles writes sb's merged config files through c. A file is
// written when absent, when the guest's copy is still what was last pushed,
// when there was no push before and initial is set (a fresh guest's file
// is the image's, not the user's), or when force is set; otherwise it is
// kept. One file's failure is reported in its result, not as the error.
func (p *Pusher) PushConfigFiles(ctx context.Context, sb store.Sandbox, c *agent.Client, initial, force bool) ([]sandbox.ConfigFileResult, error) {
	files, err := p.Files(ctx, sb.WorkspaceID)
	if err != nil || len(files) == 0 {
		return nil, err
	}
	pushed, err := p.Store.ConfigFilePushes(ctx, sb.ID)
	if err != nil {
		return nil, err
	}
	home := ""
	out := make([]sandbox.ConfigFileResult, 0, len(files))
	for _, f := range files {
		r := sandbox.ConfigFileResult{Path: f.Path}
		dest := f.Path
		if strings.HasPrefix(f.Path, homePrefix) {
			if home == "" {
				if home, err = p.home(ctx, c); err != nil {
					return nil, err
				}
			}
			dest = path.Join(home, f.Path[len(homePrefix):])
		}
		r.GuestPath = dest
		owner, base := p.User, home
		if !strings.HasPrefix(f.Path, homePrefix) {
			// A file under /etc stays root's: one the image user owned
			// there (profile.d, sudoers.d) would hand them root.
			owner, base = "", "/etc"
		}
		if err := noSymlinks(ctx, c, base, dest); err != nil {
			r.Action, r.Error = sandbox.ConfigFailed, err.Error()
			out = append(out, r)
			continue
		}
		want := Hash([]byte(f.Content))
		cur, rerr := c.ReadFileBytes(ctx, dest)
		switch {
		case rerr != nil && !agent.IsNotFound(rerr):
			r.Action, r.Error = sandbox.ConfigFailed, "read: "+rerr.Error()
			out = append(out, r)
			continue
		case rerr == nil && Hash(cur) == want:
			r.Action = sandbox.ConfigUnchanged
		case rerr == nil && !force && !(pushed[f.Path] == Hash(cur) || (initial && pushed[f.Path] == "")):
			r.Action = sandbox.ConfigKept
		default:
			res, werr := c.WriteFiles(ctx, []agent.FileWrite{{Path: dest, Content: base64.StdEncoding.EncodeToString([]byte(f.Content)),
				Encoding: "base64", Mode: fmt.Sprintf("%04o", f.Mode), Owner: owner, Parents: true}})
			if werr == nil {
				werr = res.Err()
			}
			if werr != nil {
				r.Action, r.Error = sandbox.ConfigFailed, "write: "+werr.Error()
				out = append(out, r)
				continue
			}
			r.Action = sandbox.ConfigWritten
		}
		if r.Action == sandbox.ConfigKept {
			out = append(out, r)
			continue
		}
		if pushed[f.Path] != want {
			if err := p.Store.RecordConfigFilePush(ctx, sb.ID, f.Path, want); err != nil {
				return out, err
			}
		}
		out = append(out, r)
	}
	return out, nil
}

func (p *Pusher) home(ctx context.Context, c *agent.Client) (string, error) {
	res, err := c.Exec(ctx, agent.ExecRequest{Argv: []string{"sh", "-c", `printf %s "$HOME"`}, User: p.User, TimeoutMs: pushTimeoutSec * 1000})
	if err != nil {
		return "", fmt.Errorf("find home: %w", err)
	}
	h := strings.TrimSpace(res.Stdout)
	if res.ExitCode != 0 || !path.IsAbs(h) || h == "/" {
		return "", fmt.Errorf("find home: exit %d, %q is not a home", res.ExitCode, h)
	}
	return h, nil
}

// noSymlinks refuses a destination reached through a symlink the guest
// made: the agent writes as root, so ~/.config/x linked to /etc/shadow
// would otherwise replace that file (owned by the image user). The
// deepest existing component of dest must resolve to itself under base's
// real path and be no symlink itself (Stat describes a last component
// that is one rather than following it). A guest racing the
// check can still swap a directory between it and the write (see
// docs/SECURITY.md).
func noSymlinks(ctx context.Context, c *agent.Client, base, dest string) error {
	bi, err := c.Stat(ctx, base)
	if err != nil {
		return fmt.Errorf("stat %s: %w", base, err)
	}
	for d := dest; ; {
		fi, err := c.Stat(ctx, d)
		if agent.IsNotFound(err) && d != base {
			d = path.Dir(d)
			continue
		}
		if err != nil {
			return fmt.Errorf("stat %s: %w", d, err)
		}
		if fi.Type == "symlink" && d != base {
			return fmt.Errorf("%s is a symlink: not followed", d)
		}
		want := path.Join(bi.Path, strings.TrimPrefix(d, base))
		if d == base {
			want = bi.Path
		}
		if fi.Path != want {
			return fmt.Errorf("%s leads to %s through a symlink: not followed", d, fi.Path)
		}
		return nil
	}
}
