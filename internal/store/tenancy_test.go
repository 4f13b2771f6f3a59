package store

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"path/filepath"
	"testing"
	"time"
)

func TestPutOAuthStateCapAndSweep(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	now := odd
	for i := range 3 {
		if err := s.PutOAuthState(ctx, OAuthState{State: fmt.Sprint("old", i), ExpiresAt: now.Add(-time.Second)}, time.Time{}, 0); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 2 {
		if err := s.PutOAuthState(ctx, OAuthState{State: fmt.Sprint("live", i), ExpiresAt: now.Add(time.Minute)}, now, 2+3); err != nil {
			t.Fatalf("live %d: %v", i, err)
		}
	}
	// The expired three were swept by the first capped insert: two are pending.
	if err := s.PutOAuthState(ctx, OAuthState{State: "over", ExpiresAt: now.Add(time.Minute)}, now, 2); !errors.Is(err, ErrLimit) {
		t.Fatalf("insert past the cap: %v, want ErrLimit", err)
	}
	if err := s.PutOAuthState(ctx, OAuthState{State: "fits", ExpiresAt: now.Add(time.Minute)}, now, 3); err != nil {
		t.Fatalf("insert under the cap: %v", err)
	}
	if n, _ := s.CountOAuthStates(ctx); n != 3 {
		t.Fatalf("pending states %d, want 3", n)
	}
	if n, err := s.DeleteExpiredOAuthStates(ctx, now.Add(time.Minute)); err != nil || n != 3 {
		t.Fatalf("DeleteExpiredOAuthStates = %d, %v; want 3", n, err)
	}
	var left int
	if err := s.r.QueryRowContext(ctx, `SELECT count(*) FROM oauth_states`).Scan(&left); err != nil || left != 0 {
		t.Fatalf("states left %d, %v", left, err)
	}
}

func TestSweepEdgeCodesAndDeadTokens(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	if _, err := s.EnsureUser(ctx, User{ID: "u1", Login: "u1"}); err != nil {
		t.Fatal(err)
	}
	for i, exp := range []time.Time{odd.Add(-time.Second), odd, odd.Add(time.Second)} {
		if err := s.PutEdgeCode(ctx, EdgeCode{Hash: []byte{byte(i)}, Host: "h", UserID: "u1", ExpiresAt: exp}); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := s.DeleteExpiredEdgeCodes(ctx, odd); err != nil || n != 2 {
		t.Fatalf("DeleteExpiredEdgeCodes = %d, %v; want 2", n, err)
	}

	hash := func(s string) []byte { h := sha256.Sum256([]byte(s)); return h[:] }
	old, recent := odd.Add(-48*time.Hour), odd.Add(-time.Hour)
	for _, tok := range []APIToken{
		{ID: "expired-long-ago", ExpiresAt: &old},
		{ID: "revoked-long-ago", RevokedAt: &old},
		{ID: "expired-recently", ExpiresAt: &recent},
		{ID: "live"},
	} {
		tok.UserID, tok.Hash = "u1", hash(tok.ID)
		if err := s.CreateAPIToken(ctx, tok); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := s.DeleteDeadAPITokens(ctx, odd.Add(-24*time.Hour)); err != nil || n != 2 {
		t.Fatalf("DeleteDeadAPITokens = %d, %v; want 2", n, err)
	}
	list, _ := s.ListAPITokens(ctx, "u1")
	if len(list) != 2 || list[0].Scope != "full" {
		t.Fatalf("tokens left %+v", list)
	}
}

func TestRevokeUserSessions(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	for _, id := range []string{"u1", "u2"} {
		if _, err := s.EnsureUser(ctx, User{ID: id, Login: id}); err != nil {
			t.Fatal(err)
		}
	}
	earlier := odd.Add(-time.Hour)
	for _, sess := range []Session{
		{ID: "a", UserID: "u1", ExpiresAt: odd.Add(time.Hour)},
		{ID: "b", UserID: "u1", ExpiresAt: odd.Add(time.Hour)},
		{ID: "c", UserID: "u1", ExpiresAt: odd.Add(time.Hour), RevokedAt: &earlier},
		{ID: "d", UserID: "u1", ExpiresAt: odd.Add(-time.Minute)},
		{ID: "e", UserID: "u2", ExpiresAt: odd.Add(time.Hour)},
	} {
		if err := s.CreateSession(ctx, sess); err != nil {
			t.Fatal(err)
		}
	}
	users, err := s.UsersWithSessions(ctx, odd)
	if err != nil || len(users) != 2 || users[0].ID != "u1" || users[1].ID != "u2" {
		t.Fatalf("UsersWithSessions = %+v, %v", users, err)
	}
	if n, err := s.RevokeUserSessions(ctx, "u1", odd); err != nil || n != 2 {
		t.Fatalf("RevokeUserSessions = %d, %v; want 2", n, err)
	}
	for id, valid := range map[string]bool{"a": false, "b": false, "e": true} {
		sess, _ := s.GetSession(ctx, id)
		if sess.Valid(odd) != valid {
			t.Errorf("session %s valid = %v, want %v", id, !valid, valid)
		}
	}
	if c, _ := s.GetSession(ctx, "c"); !c.RevokedAt.Equal(earlier) {
		t.Errorf("an earlier revocation was rewritten: %v", c.RevokedAt)
	}
	users, _ = s.UsersWithSessions(ctx, odd)
	if len(users) != 1 || users[0].ID != "u2" {
		t.Fatalf("UsersWithSessions after revoke = %+v", users)
	}
}

func TestGitHubGrant(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	u, err := s.UpsertGitHubUser(ctx, User{GitHubID: 7, Login: "octo"})
	if err != nil {
		t.Fatal(err)
	}
	g, err := s.GetGitHubGrant(ctx, u.ID)
	if err != nil || g.SealedToken != nil || g.Org != "" || g.OrgVerifiedAt != nil {
		t.Fatalf("fresh user grant = %+v, %v", g, err)
	}
	if err := s.PutGitHubGrant(ctx, u.ID, GitHubGrant{SealedToken: []byte("sealed"), Org: "acme", OrgVerifiedAt: &odd}); err != nil {
		t.Fatal(err)
	}
	g, _ = s.GetGitHubGrant(ctx, u.ID)
	if !bytes.Equal(g.SealedToken, []byte("sealed")) || g.Org != "acme" || !g.OrgVerifiedAt.Equal(odd) {
		t.Fatalf("grant = %+v", g)
	}
	// A later login refreshes the profile without touching the grant.
	if _, err := s.UpsertGitHubUser(ctx, User{GitHubID: 7, Login: "octo2"}); err != nil {
		t.Fatal(err)
	}
	if g, _ = s.GetGitHubGrant(ctx, u.ID); g.Org != "acme" {
		t.Fatalf("upsert cleared the grant: %+v", g)
	}
	if err := s.SetOrgVerified(ctx, u.ID, "", nil); err != nil {
		t.Fatal(err)
	}
	g, _ = s.GetGitHubGrant(ctx, u.ID)
	if g.Org != "" || g.OrgVerifiedAt != nil || len(g.SealedToken) == 0 {
		t.Fatalf("after clearing the membership: %+v", g)
	}
	if err := s.PutGitHubGrant(ctx, u.ID, GitHubGrant{}); err != nil {
		t.Fatal(err)
	}
	if g, _ = s.GetGitHubGrant(ctx, u.ID); g.SealedToken != nil {
		t.Fatalf("forgotten token still stored: %+v", g)
	}
	for _, err := range []error{
		s.PutGitHubGrant(ctx, "nobody", GitHubGrant{}),
		s.SetOrgVerified(ctx, "nobody", "acme", &odd),
		func() error { _, err := s.GetGitHubGrant(ctx, "nobody"); return err }(),
	} {
		if !errors.Is(err, ErrNotFound) {
			t.Errorf("unknown user: %v, want ErrNotFound", err)
		}
	}
}

// TestMigrationGivesLegacyTokensAnExpiry applies 0001-0002, stores tokens as
// the old code did (no expiry, no scope), then 0003: the never-expiring
// token now ends 90 days out and every token is full-scoped.
func TestMigrationGivesLegacyTokensAnExpiry(t *testing.T) {
	ctx := context.Background()
	ms, err := loadMigrations(migrationFS)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	db, err := openDB(ctx, dsn(filepath.Join(dir, "legacy.db"), true))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := applyMigrations(ctx, db, ms[:2]); err != nil {
		t.Fatal(err)
	}
	mustExec := func(q string, args ...any) {
		t.Helper()
		if _, err := db.ExecContext(ctx, q, args...); err != nil {
			t.Fatal(err)
		}
	}
	mustExec(`INSERT INTO users (id, login, created_at, updated_at) VALUES ('u', 'u', ?, ?)`, fmtTime(odd), fmtTime(odd))
	past := odd.Add(-time.Hour)
	mustExec(`INSERT INTO api_tokens (id, user_id, name, prefix, hash, created_at) VALUES ('forever', 'u', 'n', 'p', x'01', ?)`, fmtTime(odd))
	mustExec(`INSERT INTO api_tokens (id, user_id, name, prefix, hash, created_at, expires_at) VALUES ('dated', 'u', 'n', 'p', x'02', ?, ?)`, fmtTime(odd), fmtTime(past))
	before := time.Now()
	if err := applyMigrations(ctx, db, ms); err != nil {
		t.Fatal(err)
	}
	rows, err := db.QueryContext(ctx, `SELECT id, expires_at, scope FROM api_tokens ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	got := map[string]time.Time{}
	for rows.Next() {
		var id, exp, scope string
		if err := rows.Scan(&id, &exp, &scope); err != nil {
			t.Fatal(err)
		}
		if scope != "full" {
			t.Errorf("token %s scope %q, want full", id, scope)
		}
		if got[id], err = parseTime(exp); err != nil {
			t.Fatalf("token %s expiry %q: %v", id, exp, err)
		}
	}
	if d := got["forever"].Sub(before); d < 90*24*time.Hour-time.Minute || d > 90*24*time.Hour+time.Minute {
		t.Errorf("legacy token expires %v after the upgrade, want 90 days", d)
	}
	if !got["dated"].Equal(past) {
		t.Errorf("a dated token's expiry changed: %v", got["dated"])
	}
}
