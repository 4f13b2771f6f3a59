// Package workspace holds workspaces: what a sandbox clones and how it is set
// up (repositories, commands, variables, sealed secrets), and the create
// steps that provision a sandbox of a workspace through its agent.
package workspace

import (
	"fmt"
	"net/url"
	"path"
	"regexp"
	"strconv"
	"strings"

	"atelier/internal/config"
	"atelier/internal/ids"
	"atelier/internal/sandbox"
)

// Limits on a workspace's contents: they bound what one create provisions.
const (
	MaxRepos        = 10
	MaxCommands     = 20
	MaxEnv          = 100
	MaxSecrets      = 100
	MaxCommandLen   = 4096
	MaxValueLen     = 32 << 10
	MaxFileSecret   = 64 << 10
	MaxNameLen      = 100
	MaxDiskGB       = 1024
	defaultBranch   = "main"
	defaultSecretMo = 0o600
)

var (
	envNameRe  = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,127}$`)
	devNameRe  = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,18}[a-z0-9])?$`)
	branchRe   = regexp.MustCompile(`^[A-Za-z0-9._/-]{1,200}$`)
	clonePathR = regexp.MustCompile(`^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$`)
	imageRe    = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)
)

// Repo is one repository cloned into the sandbox's workdir.
type Repo struct {
	URL string `json:"url" maxLength:"2048" doc:"https:// (or http:// for a host on a private network) URL of the repository."`
	// Branch is cloned and tracked by prebuild staleness checks.
	Branch string `json:"branch,omitempty" maxLength:"200" doc:"Branch to clone; default main."`
	Path   string `json:"path,omitempty" maxLength:"200" doc:"Directory under the workdir to clone into; default the repository's name."`
	// SourceID names the git source whose token the clone uses; "" clones
	// without credentials (a public repository).
	SourceID string `json:"sourceId,omitempty" maxLength:"64" doc:"Git source whose token authenticates the clone; omit for a public repository."`
}

// DevAlias is an extra host of a dev command.
type DevAlias struct {
	Alias string `json:"alias" doc:"Host label part: dev-{name}-{alias}-{id}."`
	Port  int    `json:"port" doc:"Port the alias reaches."`
}

// DevCommand is started with every sandbox of the workspace and exposed
// on dev-{name}-{id} (and dev-{id} when it is the default).
type DevCommand struct {
	Name    string     `json:"name" doc:"1-20 lowercase letters, digits and inner hyphens."`
	Command string     `json:"command" maxLength:"4096" doc:"Shell command line, run in a login shell as the image user."`
	Port    int        `json:"port,omitempty" doc:"Port it serves (1024-65535); 0: not exposed."`
	Aliases []DevAlias `json:"aliases,omitempty" doc:"Extra hosts dev-{name}-{alias}-{id} to other ports."`
	Default bool       `json:"default,omitempty" doc:"Also answer on dev-{id}; at most one command."`
	Public  bool       `json:"public,omitempty" doc:"Reachable without the edge login."`
	Cwd     string     `json:"cwd,omitempty" maxLength:"200" doc:"Directory under the workdir to run in; default the workdir."`
}

// Config is everything about a workspace except its name and secrets.
type Config struct {
	Repos        []Repo            `json:"repos,omitempty" doc:"Repositories to clone, in order."`
	Image        string            `json:"image,omitempty" doc:"Image of its sandboxes; default the host's default image."`
	Vcpus        int               `json:"vcpus,omitempty" doc:"vCPUs of its sandboxes; 0: the host default."`
	MemoryMB     int               `json:"memoryMb,omitempty" doc:"Memory of its sandboxes in MiB; 0: the host default."`
	DiskGB       int               `json:"diskGb,omitempty" doc:"Disk of its sandboxes in GiB; 0: the image's size."`
	InitCommands []string          `json:"initCommands,omitempty" doc:"Shell commands run once, in order, in the workdir after the clone (in the prebuild when there is one)."`
	DevCommands  []DevCommand      `json:"devCommands,omitempty" doc:"Commands started and exposed in every sandbox."`
	Env          map[string]string `json:"env,omitempty" doc:"Environment variables (not secret: shown to whoever sees the workspace)."`
	UseNpmCache  bool              `json:"useNpmCache,omitempty" doc:"Point npm at the host's shared package cache."`
}

// SecretFile is a secret written as a file in the guest.
type SecretFile struct {
	Path    string `json:"path" maxLength:"512" doc:"Absolute path, or ~/ for the image user's home."`
	Content string `json:"content,omitempty" maxLength:"65536" doc:"File content; write-only: never returned."`
	Mode    string `json:"mode,omitempty" doc:"Octal permission bits; default 0600."`
}

func fieldErr(field, format string, a ...any) error {
	return &sandbox.FieldError{Field: field, Message: fmt.Sprintf(format, a...)}
}

// Normalize fills defaults and validates c; the error is a
// *sandbox.FieldError naming the first bad field ("repos[1].url").
func (c *Config) Normalize() error {
	if c.Repos == nil {
		c.Repos = []Repo{}
	}
	if c.InitCommands == nil {
		c.InitCommands = []string{}
	}
	if c.DevCommands == nil {
		c.DevCommands = []DevCommand{}
	}
	if c.Env == nil {
		c.Env = map[string]string{}
	}
	if len(c.Repos) > MaxRepos {
		return fieldErr("repos", "at most %d repositories", MaxRepos)
	}
	paths := map[string]int{}
	for i := range c.Repos {
		r := &c.Repos[i]
		f := fmt.Sprintf("repos[%d]", i)
		if err := checkRepoURL(r.URL); err != nil {
			return fieldErr(f+".url", "%s", err)
		}
		if r.Branch == "" {
			r.Branch = defaultBranch
		}
		if !branchRe.MatchString(r.Branch) || strings.Contains(r.Branch, "..") || strings.HasPrefix(r.Branch, "-") {
			return fieldErr(f+".branch", "must be a branch name: letters, digits, . _ / -, not starting with -")
		}
		if r.Path == "" {
			r.Path = strings.TrimSuffix(path.Base(strings.TrimSuffix(r.URL, "/")), ".git")
		}
		if !clonePathR.MatchString(r.Path) || hasDotSegment(r.Path) {
			return fieldErr(f+".path", "must be a relative path under the workdir (letters, digits, . _ -), without . or .. segments")
		}
		if j, dup := paths[r.Path]; dup {
			return fieldErr(f+".path", "%q is also repos[%d]'s path", r.Path, j)
		}
		paths[r.Path] = i
		if r.SourceID != "" && !ids.ValidSandboxID(r.SourceID) {
			return fieldErr(f+".sourceId", "must be a git source id (12 characters [a-z0-9])")
		}
	}
	if c.Image != "" && !imageRe.MatchString(c.Image) {
		return fieldErr("image", "must match %s", imageRe)
	}
	if c.Vcpus != 0 && (c.Vcpus < config.MinVcpus || c.Vcpus > config.MaxVcpus) {
		return fieldErr("vcpus", "must be between %d and %d", config.MinVcpus, config.MaxVcpus)
	}
	if c.MemoryMB != 0 && (c.MemoryMB < config.MinMemoryMB || c.MemoryMB > config.MaxMemoryMB) {
		return fieldErr("memoryMb", "must be between %d and %d", config.MinMemoryMB, config.MaxMemoryMB)
	}
	if c.DiskGB < 0 || c.DiskGB > MaxDiskGB {
		return fieldErr("diskGb", "must be between 0 and %d", MaxDiskGB)
	}
	if len(c.InitCommands) > MaxCommands {
		return fieldErr("initCommands", "at most %d commands", MaxCommands)
	}
	for i, cmd := range c.InitCommands {
		if strings.TrimSpace(cmd) == "" || len(cmd) > MaxCommandLen {
			return fieldErr(fmt.Sprintf("initCommands[%d]", i), "must be a non-blank command of at most %d bytes", MaxCommandLen)
		}
	}
	if len(c.DevCommands) > MaxCommands {
		return fieldErr("devCommands", "at most %d commands", MaxCommands)
	}
	names, defaults := map[string]bool{}, 0
	for i := range c.DevCommands {
		d := &c.DevCommands[i]
		f := fmt.Sprintf("devCommands[%d]", i)
		if !devNameRe.MatchString(d.Name) {
			return fieldErr(f+".name", "must be 1-20 lowercase letters, digits and inner hyphens")
		}
		if names[d.Name] {
			return fieldErr(f+".name", "%q is used by another dev command", d.Name)
		}
		names[d.Name] = true
		if strings.TrimSpace(d.Command) == "" || len(d.Command) > MaxCommandLen {
			return fieldErr(f+".command", "must be a non-blank command of at most %d bytes", MaxCommandLen)
		}
		if d.Port != 0 && (d.Port < 1024 || d.Port > 65535) {
			return fieldErr(f+".port", "must be between 1024 and 65535, or 0 for none")
		}
		if d.Port == 0 && (d.Default || d.Public || len(d.Aliases) > 0) {
			return fieldErr(f+".port", "is needed to expose the command (default, public or aliases given)")
		}
		if d.Default {
			defaults++
			if defaults > 1 {
				return fieldErr(f+".default", "only one dev command may be the default")
			}
		}
		seen := map[string]bool{}
		for j, a := range d.Aliases {
			af := fmt.Sprintf("%s.aliases[%d]", f, j)
			if !devNameRe.MatchString(a.Alias) || seen[a.Alias] {
				return fieldErr(af+".alias", "must be a unique 1-20 character label of lowercase letters, digits and inner hyphens")
			}
			seen[a.Alias] = true
			if a.Port < 1024 || a.Port > 65535 {
				return fieldErr(af+".port", "must be between 1024 and 65535")
			}
		}
		if d.Cwd != "" && (!clonePathR.MatchString(d.Cwd) || hasDotSegment(d.Cwd)) {
			return fieldErr(f+".cwd", "must be a relative path under the workdir, without . or .. segments")
		}
	}
	if len(c.Env) > MaxEnv {
		return fieldErr("env", "at most %d variables", MaxEnv)
	}
	for k, v := range c.Env {
		if !envNameRe.MatchString(k) {
			return fieldErr("env."+k, "must be a variable name: letters, digits and _, not starting with a digit")
		}
		if len(v) > MaxValueLen || strings.ContainsRune(v, 0) {
			return fieldErr("env."+k, "must be at most %d bytes without NUL", MaxValueLen)
		}
	}
	return nil
}

// checkRepoURL accepts https URLs, and http ones (a git server on a private
// network); never credentials in the URL, which would end up in the guest's
// .git/config (reference weak point 6).
func checkRepoURL(raw string) error {
	if raw == "" {
		return fmt.Errorf("is required")
	}
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") {
		return fmt.Errorf("must be an https:// URL of a repository")
	}
	if u.User != nil {
		return fmt.Errorf("must not carry credentials: add a git source with the token and name it in sourceId")
	}
	if u.RawQuery != "" || u.Fragment != "" || strings.TrimSuffix(u.Path, "/") == "" {
		return fmt.Errorf("must be a repository URL without query or fragment")
	}
	return nil
}

func hasDotSegment(p string) bool {
	for s := range strings.SplitSeq(p, "/") {
		if s == "." || s == ".." {
			return true
		}
	}
	return false
}

// checkSecretName validates a secret variable's name.
func checkSecretName(field, name string) error {
	if !envNameRe.MatchString(name) {
		return fieldErr(field, "must be a variable name: letters, digits and _, not starting with a digit")
	}
	return nil
}

// checkSecretPath validates a secret file's path: absolute or under ~/,
// clean, never a directory the agent or the system depend on.
func checkSecretPath(field, p string) error {
	rest, home := strings.CutPrefix(p, "~/")
	if !home && !strings.HasPrefix(p, "/") {
		return fieldErr(field, "must be absolute or start with ~/")
	}
	if rest == "" || path.Clean(p) != p || hasDotSegment(rest) || strings.ContainsAny(p, "\x00\n") {
		return fieldErr(field, "must be a clean file path without . or .. segments")
	}
	if !home {
		for _, bad := range []string{"/proc", "/sys", "/dev", "/etc/atelier", "/run/atelier", "/usr/local/bin/atelier"} {
			if p == bad || strings.HasPrefix(p, bad+"/") {
				return fieldErr(field, "may not be under %s", bad)
			}
		}
	}
	return nil
}

// parseMode reads an octal mode, default 0600; at most 0777.
func parseMode(field, s string) (int, error) {
	if s == "" {
		return defaultSecretMo, nil
	}
	m, err := strconv.ParseUint(s, 8, 32)
	if err != nil || m > 0o777 {
		return 0, fieldErr(field, "must be octal permission bits such as 0600")
	}
	return int(m), nil
}
