package auth

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base32"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"
	"unicode/utf8"

	"atelier/internal/config"
	"atelier/internal/ids"
	"atelier/internal/store"
)

const (
	tokenSecretPrefix = "atl_"
	tokenPrefixLen    = 8
	maxTokenName      = 100
)

var (
	tokenEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)
	// 32 random bytes encode to 52 base32 characters.
	tokenSecretRe = regexp.MustCompile(`^atl_[a-z2-7]{52}$`)
)

// TokenRequest asks for an API token.
type TokenRequest struct {
	Name string
	// TTL is the lifetime; 0 means auth.tokenTtlDays, which is also the
	// longest allowed.
	TTL time.Duration
	// NoExpiry asks for a token that never expires; auth.tokenNoExpiry must
	// allow it, and a token cannot ask for it.
	NoExpiry bool
	// Scope is read, full or admin; "" is full.
	Scope Scope
}

// CreateToken issues an API token for p's user. The secret is returned once
// and only its SHA-256 is stored. A token never grants more than the
// credential that made it: its scope is at most p's, and a token-made token
// never outlives its maker or lacks an expiry. Admin scope needs an admin
// (the unix socket, or a user in auth.admins). Bad input is a *FieldError;
// asking for more than p may grant wraps ErrForbidden.
func (s *Service) CreateToken(ctx context.Context, p Principal, req TokenRequest) (string, store.APIToken, error) {
	name := strings.TrimSpace(req.Name)
	if name == "" || utf8.RuneCountInString(name) > maxTokenName {
		return "", store.APIToken{}, &FieldError{Field: "name", Message: fmt.Sprintf("must be 1 to %d characters", maxTokenName)}
	}
	scope, ok := ParseScope(string(req.Scope))
	if !ok {
		return "", store.APIToken{}, &FieldError{Field: "scope", Message: `must be "read", "full" or "admin"`}
	}
	if scope.rank() > p.grantable().rank() {
		return "", store.APIToken{}, fmt.Errorf("%w: this credential may create tokens of scope %q at most, not %q", ErrForbidden, p.grantable(), scope)
	}
	maxTTL := time.Duration(s.cfg.Auth.TokenTTLDays) * 24 * time.Hour
	if maxTTL <= 0 {
		maxTTL = 90 * 24 * time.Hour
	}
	switch {
	case req.TTL < 0:
		return "", store.APIToken{}, &FieldError{Field: "ttlHours", Message: "must not be negative"}
	case req.TTL > maxTTL:
		return "", store.APIToken{}, &FieldError{Field: "ttlHours", Message: fmt.Sprintf("at most %d hours (auth.tokenTtlDays is %d)", int(maxTTL.Hours()), s.cfg.Auth.TokenTTLDays)}
	case req.NoExpiry && req.TTL > 0:
		return "", store.APIToken{}, &FieldError{Field: "noExpiry", Message: "give ttlHours or noExpiry, not both"}
	case req.NoExpiry && p.Method == MethodToken:
		return "", store.APIToken{}, fmt.Errorf("%w: a token cannot create a token without expiry", ErrForbidden)
	case req.NoExpiry && s.cfg.Auth.TokenNoExpiry != config.TokenNoExpiryAllow:
		return "", store.APIToken{}, &FieldError{Field: "noExpiry", Message: "tokens without expiry are disabled on this host (auth.tokenNoExpiry, ATELIER_AUTH_TOKEN_NO_EXPIRY)"}
	}
	now := s.now()
	var exp *time.Time
	if !req.NoExpiry {
		ttl := req.TTL
		if ttl == 0 {
			ttl = maxTTL
		}
		e := now.Add(ttl)
		if p.Method == MethodToken && p.TokenExpiresAt != nil && e.After(*p.TokenExpiresAt) {
			if req.TTL > 0 {
				return "", store.APIToken{}, fmt.Errorf("%w: a token cannot create one that outlives it (this one expires %s)", ErrForbidden, p.TokenExpiresAt.UTC().Format(time.RFC3339))
			}
			e = *p.TokenExpiresAt // the default is cut to the maker's life
		}
		exp = &e
	}
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", store.APIToken{}, fmt.Errorf("create token: read random: %w", err)
	}
	secret := tokenSecretPrefix + tokenEncoding.EncodeToString(b)
	sum := sha256.Sum256([]byte(secret))
	tok := store.APIToken{
		ID:        ids.New(12),
		UserID:    p.User.ID,
		Name:      name,
		Prefix:    secret[:tokenPrefixLen],
		Hash:      sum[:],
		CreatedAt: now,
		ExpiresAt: exp,
		Scope:     string(scope),
	}
	if err := s.st.CreateAPIToken(ctx, tok); err != nil {
		return "", store.APIToken{}, fmt.Errorf("create token: %w", err)
	}
	s.log.Info("api token created", "user_id", p.User.ID, "token_id", tok.ID, "scope", scope, "by", p.Method)
	return secret, tok, nil
}

// ListTokens lists userID's tokens (revoked and expired ones included).
func (s *Service) ListTokens(ctx context.Context, userID string) ([]store.APIToken, error) {
	toks, err := s.st.ListAPITokens(ctx, userID)
	if err != nil {
		return nil, fmt.Errorf("list tokens: %w", err)
	}
	return toks, nil
}

// RevokeToken revokes one of userID's tokens; store.ErrNotFound when the
// token is not theirs, so other users' token ids are not revealed.
func (s *Service) RevokeToken(ctx context.Context, userID, id string) error {
	if err := s.st.RevokeAPIToken(ctx, userID, id, s.now()); err != nil {
		return fmt.Errorf("revoke token: %w", err)
	}
	s.log.Info("api token revoked", "user_id", userID, "token_id", id)
	return nil
}

func (s *Service) authenticateBearer(ctx context.Context, header string) (Principal, error) {
	scheme, secret, ok := strings.Cut(header, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return Principal{}, ErrUnauthenticated
	}
	secret = strings.TrimSpace(secret)
	if !tokenSecretRe.MatchString(secret) {
		return Principal{}, ErrUnauthenticated
	}
	sum := sha256.Sum256([]byte(secret))
	now := s.now()
	tok, err := s.st.LookupAPIToken(ctx, sum[:], now)
	if errors.Is(err, store.ErrNotFound) {
		return Principal{}, ErrUnauthenticated
	}
	if err != nil {
		return Principal{}, fmt.Errorf("look up api token: %w", err)
	}
	u, err := s.st.GetUser(ctx, tok.UserID)
	if errors.Is(err, store.ErrNotFound) {
		return Principal{}, ErrUnauthenticated
	}
	if err != nil {
		return Principal{}, fmt.Errorf("load token user: %w", err)
	}
	if err := s.admit(ctx, u); err != nil {
		return Principal{}, err
	}
	// Last-used is informational: a write per request is not worth it.
	if tok.LastUsedAt == nil || now.Sub(*tok.LastUsedAt) >= touchInterval {
		if err := s.st.TouchAPIToken(ctx, tok.ID, now); err != nil {
			s.log.Warn("touch api token", "err", err, "token_id", tok.ID)
		}
	}
	scope, ok := ParseScope(tok.Scope)
	if !ok {
		return Principal{}, fmt.Errorf("api token %s has unknown scope %q", tok.ID, tok.Scope)
	}
	p := Principal{User: u, Method: MethodToken, Scope: scope, TokenID: tok.ID, TokenExpiresAt: tok.ExpiresAt}
	// An admin token acts as admin only while its user is one.
	p.Admin = scope == ScopeAdmin && s.IsAdmin(u)
	if scope == ScopeAdmin && !p.Admin {
		p.Scope = ScopeFull
	}
	return p, nil
}
