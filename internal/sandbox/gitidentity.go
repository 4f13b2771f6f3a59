package sandbox

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode"

	"atelier/internal/agent"
	"atelier/internal/store"
)

// StepGit, in create after the services step: the sandbox user's git
// identity (user.name, user.email in its global git config), the owner's
// GitHub name and no-reply address when the store knows them, else
// sandbox.git.name and sandbox.git.email. A guest without git, or an
// agent that cannot run it, is noted in the journal and does not fail the
// create: the identity is a convenience the user can set themselves.
const StepGit = "git"

// maxGitValue bounds a name or email written into a guest's git config.
const maxGitValue = 256

// gitIdentity is the name and email a new sandbox of owner gets.
func (s *Service) gitIdentity(ctx context.Context, owner string) (name, email, source string) {
	name, email, source = s.cfg.Sandbox.Git.Name, s.cfg.Sandbox.Git.Email, "config"
	u, err := s.st.GetUser(ctx, owner)
	if err != nil || u.Login == "" {
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			s.log.Warn("read sandbox owner for its git identity", "owner", owner, "err", err)
		}
		return name, email, source
	}
	name = u.Name
	if name == "" {
		name = u.Login
	}
	if u.GitHubID > 0 {
		// GitHub attributes commits with this address to the account
		// without revealing the user's own.
		email = strconv.FormatInt(u.GitHubID, 10) + "+" + u.Login + "@users.noreply.github.com"
	}
	return name, email, "github"
}

// cleanGitValue drops control characters (a newline would start a new
// line of the user's git config) and bounds the length.
func cleanGitValue(v string) string {
	v = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return -1
		}
		return r
	}, v)
	v = strings.TrimSpace(v)
	if len(v) > maxGitValue {
		v = v[:maxGitValue]
	}
	return v
}

// applyGitIdentity sets the identity through the agent as the image's
// user, one `git config --global -- KEY VALUE` each: argv, never a shell,
// and "--" so that no value is ever read as an option.
func (s *Service) applyGitIdentity(ctx context.Context, sb store.Sandbox) (string, error) {
	c := s.pooledAgent(sb.ID)
	if c == nil {
		return "no agent", nil
	}
	name, email, source := s.gitIdentity(ctx, sb.OwnerID)
	name, email = cleanGitValue(name), cleanGitValue(email)
	user, err := c.ImageUser(ctx)
	if err != nil {
		return "", fmt.Errorf("read the image's user: %w", err)
	}
	for _, kv := range [][2]string{{"user.name", name}, {"user.email", email}} {
		if kv[1] == "" {
			continue
		}
		r, err := c.Exec(ctx, agent.ExecRequest{
			Argv: []string{"git", "config", "--global", "--", kv[0], kv[1]}, User: user, TimeoutMs: 10000,
		})
		if err == nil && r.ExitCode != 0 {
			err = fmt.Errorf("exit %d: %s", r.ExitCode, strings.TrimSpace(r.Stderr))
		}
		if err != nil {
			s.log.Warn("git identity not set", "sandbox_id", sb.ID, "err", err)
			return "not set: " + truncateDetail(err.Error()), nil
		}
	}
	who := user
	if who == "" {
		who = "agent user"
	}
	return fmt.Sprintf("%s <%s> (%s) for %s", name, email, source, who), nil
}

func truncateDetail(s string) string {
	if len(s) > 200 {
		return s[:200]
	}
	return s
}
