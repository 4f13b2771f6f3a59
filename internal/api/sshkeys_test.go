package api_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"net/http"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"atelier/internal/auth"
	"atelier/internal/config"
)

func newAuthorizedKey(t *testing.T) (line, fingerprint string) {
	t.Helper()
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	k, _ := ssh.NewPublicKey(pub)
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k))) + " me@laptop", ssh.FingerprintSHA256(k)
}

type sshKeyBody struct {
	ID          string     `json:"id"`
	Name        string     `json:"name"`
	Fingerprint string     `json:"fingerprint"`
	Type        string     `json:"type"`
	CreatedAt   time.Time  `json:"createdAt"`
	ExpiresAt   *time.Time `json:"expiresAt"`
}

func TestSSHKeysAPI(t *testing.T) {
	h := newHarness(t, config.ModeProduction, nil)
	ctx := context.Background()
	bearer := func(login string, gh int64) map[string]string {
		u, err := h.srv.Store.UpsertGitHubUser(ctx, storeUser(login, gh))
		if err != nil {
			t.Fatal(err)
		}
		secret, _, err := h.srv.Auth.CreateToken(ctx, auth.Principal{User: u, Method: auth.MethodCookie, Scope: auth.ScopeFull}, auth.TokenRequest{Name: "t"})
		if err != nil {
			t.Fatal(err)
		}
		return map[string]string{"Authorization": "Bearer " + secret}
	}
	alice, mallory := bearer("octocat", 1), bearer("mallory", 2)
	line, fp := newAuthorizedKey(t)
	exp := time.Now().Add(48 * time.Hour).UTC().Truncate(time.Second)

	r := h.do(t, "POST", "/api/ssh-keys", map[string]any{"name": "laptop", "publicKey": line + "\n", "expiresAt": exp}, alice)
	if r.status != http.StatusCreated {
		t.Fatalf("create: %d %s", r.status, r.body)
	}
	var k sshKeyBody
	r.json(t, &k)
	if k.ID == "" || k.Name != "laptop" || k.Fingerprint != fp || k.Type != "ssh-ed25519" || k.ExpiresAt == nil || !k.ExpiresAt.Equal(exp) || k.CreatedAt.IsZero() {
		t.Fatalf("created key = %+v (want fingerprint %s)", k, fp)
	}

	// The same key again is a conflict for this user but fine for another.
	if r := h.do(t, "POST", "/api/ssh-keys", map[string]any{"name": "again", "publicKey": line}, alice); r.status != http.StatusConflict {
		t.Errorf("duplicate: %d %s", r.status, r.body)
	}
	if r := h.do(t, "POST", "/api/ssh-keys", map[string]any{"name": "shared", "publicKey": line}, mallory); r.status != http.StatusCreated {
		t.Errorf("same key for another user: %d %s", r.status, r.body)
	}

	for _, tc := range []struct {
		name  string
		body  map[string]any
		field string
	}{
		{"missing name", map[string]any{"publicKey": line}, "name"},
		{"blank name", map[string]any{"name": "  ", "publicKey": line}, "name"},
		{"long name", map[string]any{"name": strings.Repeat("n", 101), "publicKey": line}, "name"},
		{"bad key", map[string]any{"name": "x", "publicKey": "ssh-ed25519 nope"}, "publicKey"},
		{"past expiry", map[string]any{"name": "x", "publicKey": line, "expiresAt": time.Now().Add(-time.Minute)}, "expiresAt"},
		{"not a time", map[string]any{"name": "x", "publicKey": line, "expiresAt": "tomorrow"}, "expiresAt"},
		{"unknown field", map[string]any{"name": "x", "publicKey": line, "type": "uploaded"}, "type"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := h.do(t, "POST", "/api/ssh-keys", tc.body, alice)
			var p problem
			r.json(t, &p)
			if r.status != http.StatusBadRequest || p.Code != "invalid_input" || !strings.Contains(p.Detail, tc.field) {
				t.Errorf("%d %+v, want 400 naming %s", r.status, p, tc.field)
			}
		})
	}

	var list struct{ Keys []sshKeyBody }
	r = h.do(t, "GET", "/api/ssh-keys", nil, alice)
	r.json(t, &list)
	if r.status != 200 || len(list.Keys) != 1 || list.Keys[0].ID != k.ID {
		t.Fatalf("alice's list: %d %s", r.status, r.body)
	}
	if strings.Contains(string(r.body), "publicKey") || strings.Contains(string(r.body), "userId") {
		t.Errorf("list exposes more than the documented fields: %s", r.body)
	}

	// Deleting someone else's key is indistinguishable from a missing one.
	if r := h.do(t, "DELETE", "/api/ssh-keys/"+k.ID, nil, mallory); r.status != http.StatusNotFound {
		t.Errorf("delete another user's key: %d %s", r.status, r.body)
	}
	if r := h.do(t, "DELETE", "/api/ssh-keys/"+k.ID, nil, alice); r.status != http.StatusNoContent {
		t.Fatalf("delete: %d %s", r.status, r.body)
	}
	if r := h.do(t, "DELETE", "/api/ssh-keys/"+k.ID, nil, alice); r.status != http.StatusNotFound {
		t.Errorf("delete twice: %d %s", r.status, r.body)
	}
	r = h.do(t, "GET", "/api/ssh-keys", nil, alice)
	r.json(t, &list)
	if len(list.Keys) != 0 {
		t.Errorf("after delete: %s", r.body)
	}
}
