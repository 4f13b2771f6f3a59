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

// CreateToken issues an API token for userID. The secret is returned once and
// only its SHA-256 is stored. ttl 0 means no expiry.
func (s *Service) CreateToken(ctx context.Context, userID, name string, ttl time.Duration) (string, store.APIToken, error) {
	name = strings.TrimSpace(name)
	if name == "" || utf8.RuneCountInString(name) > maxTokenName {
		return "", store.APIToken{}, &FieldError{Field: "name", Message: fmt.Sprintf("must be 1 to %d characters", maxTokenName)}
	}
	if ttl < 0 {
		return "", store.APIToken{}, &FieldError{Field: "ttl", Message: "must not be negative"}
	}
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", store.APIToken{}, fmt.Errorf("create token: read random: %w", err)
	}
	secret := tokenSecretPrefix + tokenEncoding.EncodeToString(b)
	sum := sha256.Sum256([]byte(secret))
	now := s.now()
	tok := store.APIToken{
		ID:        ids.New(12),
		UserID:    userID,
		Name:      name,
		Prefix:    secret[:tokenPrefixLen],
		Hash:      sum[:],
		CreatedAt: now,
	}
	if ttl > 0 {
		exp := now.Add(ttl)
		tok.ExpiresAt = &exp
	}
	if err := s.st.CreateAPIToken(ctx, tok); err != nil {
		return "", store.APIToken{}, fmt.Errorf("create token: %w", err)
	}
	s.log.Info("api token created", "user_id", userID, "token_id", tok.ID)
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
	// Last-used is informational: a write per request is not worth it.
	if tok.LastUsedAt == nil || now.Sub(*tok.LastUsedAt) >= touchInterval {
		if err := s.st.TouchAPIToken(ctx, tok.ID, now); err != nil {
			s.log.Warn("touch api token", "err", err, "token_id", tok.ID)
		}
	}
	return Principal{User: u, Method: MethodToken, TokenID: tok.ID}, nil
}
