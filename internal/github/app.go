package github

import (
	"context"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"atelier/internal/keylock"
)

// refreshBefore is how long before its expiry a cached installation token
// is replaced: a clone started with it has that long to authenticate.
const refreshBefore = 10 * time.Minute

// App is a GitHub App that mints installation tokens: a JWT signed with
// the App's private key (RS256) buys a token of one installation that
// lives an hour; tokens are cached until refreshBefore their expiry.
type App struct {
	ID  int64
	key *rsa.PrivateKey
	c   *Client
	now func() time.Time

	locks keylock.Mutex // one mint per installation at a time
	mu    sync.Mutex
	cache map[int64]InstallationToken
	mints int
}

// InstallationToken is a minted token and when GitHub expires it.
type InstallationToken struct {
	Token     string
	ExpiresAt time.Time
}

// Installation is the account an installation belongs to.
type Installation struct {
	ID          int64
	Account     string // login of the user or organization
	AccountID   int64  // GitHub id of the user or organization
	AccountType string // "User" or "Organization"
}

// LoadKey reads a PEM RSA private key (PKCS#1, as GitHub hands it out, or
// PKCS#8).
func LoadKey(path string) (*rsa.PrivateKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, errors.New("no PEM block")
	}
	if k, err := x509.ParsePKCS1PrivateKey(blk.Bytes); err == nil {
		return k, nil
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("not an RSA private key: %w", err)
	}
	rk, ok := k.(*rsa.PrivateKey)
	if !ok {
		return nil, errors.New("not an RSA private key")
	}
	return rk, nil
}

// NewApp returns the App id whose private key is key, calling c.
func NewApp(id int64, key *rsa.PrivateKey, c *Client) *App {
	return &App{ID: id, key: key, c: c, now: time.Now, cache: map[int64]InstallationToken{}}
}

// SetClock replaces time.Now (tests move time to expire cached tokens).
func (a *App) SetClock(now func() time.Time) { a.now = now }

// Mints counts the tokens minted (tests check the cache).
func (a *App) Mints() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.mints
}

// jwt is the App's own credential: issued a minute in the past against
// clock drift, valid nine minutes (GitHub allows ten).
func (a *App) jwt() (string, error) {
	now := a.now()
	t := jwt.NewWithClaims(jwt.SigningMethodRS256, jwt.RegisteredClaims{
		Issuer:    strconv.FormatInt(a.ID, 10),
		IssuedAt:  jwt.NewNumericDate(now.Add(-time.Minute)),
		ExpiresAt: jwt.NewNumericDate(now.Add(9 * time.Minute)),
	})
	s, err := t.SignedString(a.key)
	if err != nil {
		return "", fmt.Errorf("sign app jwt: %w", err)
	}
	return s, nil
}

// Installation returns installation id's account: GET /app/installations/{id}.
func (a *App) Installation(ctx context.Context, id int64) (Installation, error) {
	tok, err := a.jwt()
	if err != nil {
		return Installation{}, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, a.c.base.String()+"/app/installations/"+strconv.FormatInt(id, 10), nil)
	if err != nil {
		return Installation{}, fmt.Errorf("github: %w", err)
	}
	body, _, err := a.c.do(req, "Bearer "+tok, http.StatusOK)
	if err != nil {
		return Installation{}, err
	}
	var in struct {
		ID      int64 `json:"id"`
		Account struct {
			ID    int64  `json:"id"`
			Login string `json:"login"`
			Type  string `json:"type"`
		} `json:"account"`
	}
	if err := json.Unmarshal(body, &in); err != nil {
		return Installation{}, fmt.Errorf("github: decode installation %d: %w", id, err)
	}
	return Installation{ID: in.ID, Account: in.Account.Login, AccountID: in.Account.ID, AccountType: in.Account.Type}, nil
}

// Token returns an installation token of id, minted when none is cached
// or the cached one is within refreshBefore of its expiry.
func (a *App) Token(ctx context.Context, id int64) (InstallationToken, error) {
	if id <= 0 {
		return InstallationToken{}, fmt.Errorf("installation id %d: must be positive", id)
	}
	unlock, err := a.locks.Lock(ctx, strconv.FormatInt(id, 10))
	if err != nil {
		return InstallationToken{}, err
	}
	defer unlock()
	a.mu.Lock()
	t, ok := a.cache[id]
	a.mu.Unlock()
	if ok && a.now().Add(refreshBefore).Before(t.ExpiresAt) {
		return t, nil
	}
	t, err = a.mint(ctx, id)
	if err != nil {
		return InstallationToken{}, err
	}
	a.mu.Lock()
	a.cache[id] = t
	a.mints++
	a.mu.Unlock()
	return t, nil
}

func (a *App) mint(ctx context.Context, id int64) (InstallationToken, error) {
	tok, err := a.jwt()
	if err != nil {
		return InstallationToken{}, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost,
		a.c.base.String()+"/app/installations/"+strconv.FormatInt(id, 10)+"/access_tokens", nil)
	if err != nil {
		return InstallationToken{}, fmt.Errorf("github: %w", err)
	}
	body, _, err := a.c.do(req, "Bearer "+tok, http.StatusCreated)
	if err != nil {
		return InstallationToken{}, fmt.Errorf("mint installation token: %w", err)
	}
	var out struct {
		Token     string    `json:"token"`
		ExpiresAt time.Time `json:"expires_at"`
	}
	if err := json.Unmarshal(body, &out); err != nil {
		return InstallationToken{}, fmt.Errorf("mint installation token: decode: %w", err)
	}
	if out.Token == "" || out.ExpiresAt.IsZero() {
		return InstallationToken{}, errors.New("mint installation token: answer lacks token or expires_at")
	}
	return InstallationToken{Token: out.Token, ExpiresAt: out.ExpiresAt}, nil
}
