package auth

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"atelier/internal/store"
)

// membershipTimeout bounds one org membership request to GitHub.
const membershipTimeout = 10 * time.Second

// Eligible is the one answer to "may this user use Atelier now?", asked at
// every authentication of every credential: session cookies and API tokens
// here, the edge's host cookies (edge.sessionValid, cached 30 s) and SSH keys
// (sshproxy, per connection). It reads the configuration each time, so a
// restart with a changed allow-list takes effect at the next request.
//
//   - the local user (the unix socket, mock mode) is the host's own: yes;
//   - a GitHub user named in auth.allowedUsers: yes;
//   - else, with auth.allowedOrg, an active member: membership confirmed
//     within auth.orgRecheckMinutes is trusted, older is asked of GitHub
//     again with the user's own OAuth token (kept sealed since their login);
//     no token, a revoked one, or anything but "active" is a refusal;
//   - anyone else: no.
//
// A refusal wraps ErrIneligible. When GitHub cannot answer, a membership
// confirmed within orgRecheckMinutes + orgGrace is still trusted; past that
// the error wraps ErrUnavailable and nothing is revoked.
func (s *Service) Eligible(ctx context.Context, u store.User) error {
	if u.ID == LocalUserID {
		return nil
	}
	if u.GitHubID == 0 {
		return fmt.Errorf("user %s is not a GitHub user: %w", u.ID, ErrIneligible)
	}
	if s.inAllowList(u.Login) {
		return nil
	}
	org := strings.TrimSpace(s.cfg.Auth.AllowedOrg)
	if org == "" {
		return fmt.Errorf("%s is not in auth.allowedUsers: %w", u.Login, ErrIneligible)
	}
	return s.orgMember(ctx, u, org)
}

// IsAdmin reports whether u holds the admin role: the local user (root on
// the host through the unix socket, or mock mode's single developer), or a
// GitHub login named in auth.admins. The role adds to eligibility, never
// replaces it.
func (s *Service) IsAdmin(u store.User) bool {
	if u.ID == LocalUserID {
		return true
	}
	if u.GitHubID == 0 {
		return false
	}
	for _, a := range s.cfg.Auth.Admins {
		if strings.EqualFold(strings.TrimSpace(a), u.Login) {
			return true
		}
	}
	return false
}

func (s *Service) inAllowList(login string) bool {
	for _, a := range s.cfg.Auth.AllowedUsers {
		if strings.EqualFold(strings.TrimSpace(a), login) {
			return true
		}
	}
	return false
}

func (s *Service) orgRecheck() time.Duration {
	if m := s.cfg.Auth.OrgRecheckMinutes; m > 0 {
		return time.Duration(m) * time.Minute
	}
	return 10 * time.Minute
}

func fresh(g store.GitHubGrant, org string, now time.Time, within time.Duration) bool {
	return g.Org == org && g.OrgVerifiedAt != nil && now.Sub(*g.OrgVerifiedAt) < within
}

func (s *Service) orgMember(ctx context.Context, u store.User, org string) error {
	g, err := s.st.GetGitHubGrant(ctx, u.ID)
	if err != nil {
		return fmt.Errorf("check org membership of %s: %w", u.Login, err)
	}
	if fresh(g, org, s.now(), s.orgRecheck()) {
		return nil
	}
	// One GitHub request per user at a time; whoever waited finds the
	// answer in the store.
	unlock, err := s.orgLocks.Lock(ctx, u.ID)
	if err != nil {
		return fmt.Errorf("check org membership of %s: %w", u.Login, err)
	}
	defer unlock()
	if g, err = s.st.GetGitHubGrant(ctx, u.ID); err != nil {
		return fmt.Errorf("check org membership of %s: %w", u.Login, err)
	}
	now := s.now()
	if fresh(g, org, now, s.orgRecheck()) {
		return nil
	}
	refuse := func(why string) error {
		if err := s.st.SetOrgVerified(ctx, u.ID, "", nil); err != nil {
			s.log.Warn("clear org membership", "user_id", u.ID, "err", err)
		}
		return fmt.Errorf("%s %s: %w", u.Login, why, ErrIneligible)
	}
	if len(g.SealedToken) == 0 {
		return refuse("has no GitHub token on record to re-verify membership of " + org + " (log in again)")
	}
	box, err := s.secrets()
	if err != nil {
		return fmt.Errorf("check org membership of %s: %w: %w", u.Login, ErrUnavailable, err)
	}
	tok, err := box.Open(g.SealedToken, []byte(u.ID))
	if err != nil {
		return refuse("has a GitHub token this host cannot open (secrets key changed; log in again)")
	}
	cctx, cancel := context.WithTimeout(ctx, membershipTimeout)
	defer cancel()
	active, err := s.membership(cctx, string(tok), org)
	switch {
	case err == nil && active:
		if err := s.st.SetOrgVerified(ctx, u.ID, org, &now); err != nil {
			s.log.Warn("record org membership", "user_id", u.ID, "err", err)
		}
		s.log.Debug("org membership re-verified", "user_id", u.ID, "login", u.Login, "org", org)
		return nil
	case err == nil:
		return refuse("is no longer an active member of " + org)
	case errors.Is(err, errTokenRevoked):
		return refuse("revoked Atelier's GitHub access")
	case ctx.Err() != nil:
		return ctx.Err()
	case fresh(g, org, now, s.orgRecheck()+orgGrace):
		s.log.Warn("github unreachable: trusting the last confirmed org membership", "user_id", u.ID, "login", u.Login, "org", org, "verified_at", g.OrgVerifiedAt, "err", err)
		return nil
	default:
		return fmt.Errorf("verify %s's membership of %s: %w: %w", u.Login, org, ErrUnavailable, err)
	}
}

var errTokenRevoked = errors.New("github token revoked")

// membership asks GitHub whether the token's user is an active member of
// org. A definite answer has a nil error: 200 with any state but active,
// 404, or a 403 that is not rate limiting, is "not a member"; 401 is
// errTokenRevoked. Network errors, 5xx, 429 and rate-limit 403s are errors.
func (s *Service) membership(ctx context.Context, accessToken, org string) (bool, error) {
	var m struct {
		State string `json:"state"`
	}
	status, hdr, err := s.githubGetHeader(ctx, accessToken, "/user/memberships/orgs/"+url.PathEscape(org), &m)
	switch {
	case err != nil:
		return false, fmt.Errorf("check org membership: %w", err)
	case status == http.StatusOK:
		return m.State == "active", nil
	case status == http.StatusUnauthorized:
		return false, errTokenRevoked
	case status == http.StatusNotFound:
		return false, nil
	case status == http.StatusForbidden && hdr.Get("X-RateLimit-Remaining") != "0" && hdr.Get("Retry-After") == "":
		// The user or the org restricts this app: not a member as far as
		// Atelier can know.
		return false, nil
	default:
		return false, fmt.Errorf("check org membership: github answered %d", status)
	}
}

// checkUser applies Eligible for an authentication: a refusal ends the
// user's sessions server-side, so re-adding them later needs a new login.
func (s *Service) checkUser(ctx context.Context, u store.User) error {
	err := s.Eligible(ctx, u)
	if errors.Is(err, ErrIneligible) {
		s.endSessions(ctx, u, err)
	}
	return err
}

func (s *Service) endSessions(ctx context.Context, u store.User, why error) {
	n, err := s.st.RevokeUserSessions(context.WithoutCancel(ctx), u.ID, s.now())
	if err != nil {
		s.log.Error("revoke sessions of a refused user", "user_id", u.ID, "err", err)
		return
	}
	if n > 0 {
		s.log.Info("access refused: sessions revoked", "user_id", u.ID, "login", u.Login, "sessions", n, "reason", why.Error())
	}
}

// CheckSession is the edge's question for a host cookie: is the dashboard
// session sid of userID still valid, and is its user still eligible?
func (s *Service) CheckSession(ctx context.Context, sid, userID string) error {
	sess, err := s.st.GetSession(ctx, sid)
	if errors.Is(err, store.ErrNotFound) {
		return ErrUnauthenticated
	}
	if err != nil {
		return fmt.Errorf("load session: %w", err)
	}
	if !sess.Valid(s.now()) || sess.UserID != userID {
		return ErrUnauthenticated
	}
	u, err := s.st.GetUser(ctx, userID)
	if errors.Is(err, store.ErrNotFound) {
		return ErrUnauthenticated
	}
	if err != nil {
		return fmt.Errorf("load session user: %w", err)
	}
	if err := s.checkUser(ctx, u); err != nil {
		if errors.Is(err, ErrIneligible) {
			return fmt.Errorf("%w: %w", ErrUnauthenticated, err)
		}
		return err
	}
	return nil
}
