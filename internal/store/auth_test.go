package store

import (
	"context"
	"crypto/sha256"
	"errors"
	"testing"
	"time"
)

func TestUpsertGitHubUser(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	fixedClock(s, odd)

	u, err := s.UpsertGitHubUser(ctx, User{GitHubID: 42, Login: "octo", Name: "Octo Cat", AvatarURL: "https://a/1"})
	if err != nil {
		t.Fatal(err)
	}
	if len(u.ID) != userIDLen || u.Login != "octo" || !u.CreatedAt.Equal(odd) || !u.UpdatedAt.Equal(odd) {
		t.Fatalf("first upsert = %+v", u)
	}

	later := odd.Add(time.Hour)
	fixedClock(s, later)
	u2, err := s.UpsertGitHubUser(ctx, User{ID: "ignored", GitHubID: 42, Login: "octo2", AvatarURL: "https://a/2"})
	if err != nil {
		t.Fatal(err)
	}
	if u2.ID != u.ID || !u2.CreatedAt.Equal(odd) {
		t.Errorf("second upsert changed identity: %+v -> %+v", u, u2)
	}
	if u2.Login != "octo2" || u2.Name != "" || u2.AvatarURL != "https://a/2" || !u2.UpdatedAt.Equal(later) {
		t.Errorf("second upsert did not refresh profile: %+v", u2)
	}
	got, err := s.GetUser(ctx, u.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got != u2 {
		t.Errorf("GetUser = %+v, want %+v", got, u2)
	}

	other, err := s.UpsertGitHubUser(ctx, User{GitHubID: 43, Login: "other"})
	if err != nil {
		t.Fatal(err)
	}
	if other.ID == u.ID {
		t.Error("two GitHub users share an id")
	}
	if _, err := s.UpsertGitHubUser(ctx, User{ID: u.ID, GitHubID: 44, Login: "thief"}); !errors.Is(err, ErrDuplicate) {
		t.Errorf("upsert reusing another user's id: err = %v, want ErrDuplicate", err)
	}
	if _, err := s.UpsertGitHubUser(ctx, User{Login: "nobody"}); err == nil {
		t.Error("upsert without GitHub id succeeded")
	}
}

func TestEnsureUser(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)

	first, err := s.EnsureUser(ctx, User{ID: "local", Login: "local", Name: "Local user", CreatedAt: odd})
	if err != nil {
		t.Fatal(err)
	}
	if first.GitHubID != 0 || first.Name != "Local user" || !first.CreatedAt.Equal(odd) {
		t.Fatalf("EnsureUser = %+v", first)
	}
	again, err := s.EnsureUser(ctx, User{ID: "local", Login: "changed"})
	if err != nil {
		t.Fatal(err)
	}
	if again != first {
		t.Errorf("second EnsureUser modified the row: %+v -> %+v", first, again)
	}
	// Two local users without GitHub ids must not collide on the UNIQUE column.
	if _, err := s.EnsureUser(ctx, User{ID: "local2", Login: "local2"}); err != nil {
		t.Errorf("second user without GitHub id: %v", err)
	}
	if _, err := s.GetUser(ctx, "missing"); !errors.Is(err, ErrNotFound) {
		t.Errorf("GetUser(missing) = %v, want ErrNotFound", err)
	}
	if _, err := s.EnsureUser(ctx, User{Login: "x"}); err == nil {
		t.Error("EnsureUser without id succeeded")
	}
}

func TestSessions(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	if _, err := s.EnsureUser(ctx, User{ID: "u1", Login: "u1"}); err != nil {
		t.Fatal(err)
	}
	exp := odd.Add(24 * time.Hour)
	if err := s.CreateSession(ctx, Session{ID: "s1", UserID: "u1", CreatedAt: odd, ExpiresAt: exp}); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateSession(ctx, Session{ID: "s1", UserID: "u1", ExpiresAt: exp}); !errors.Is(err, ErrDuplicate) {
		t.Errorf("duplicate session: err = %v, want ErrDuplicate", err)
	}
	if err := s.CreateSession(ctx, Session{ID: "s2", UserID: "ghost", ExpiresAt: exp}); err == nil {
		t.Error("session for an unknown user was accepted (foreign key not enforced)")
	}

	got, err := s.GetSession(ctx, "s1")
	if err != nil {
		t.Fatal(err)
	}
	if got.UserID != "u1" || !got.CreatedAt.Equal(odd) || !got.ExpiresAt.Equal(exp) || got.RevokedAt != nil {
		t.Fatalf("GetSession = %+v", got)
	}
	validity := []struct {
		at   time.Time
		want bool
	}{
		{odd, true},
		{exp.Add(-time.Nanosecond), true},
		{exp, false},
	}
	for _, v := range validity {
		if got.Valid(v.at) != v.want {
			t.Errorf("Valid(%v) = %v, want %v", v.at, !v.want, v.want)
		}
	}

	revokedAt := odd.Add(time.Minute)
	if err := s.RevokeSession(ctx, "s1", revokedAt); err != nil {
		t.Fatal(err)
	}
	if err := s.RevokeSession(ctx, "s1", revokedAt.Add(time.Hour)); err != nil {
		t.Errorf("second revoke: %v", err)
	}
	if err := s.RevokeSession(ctx, "missing", revokedAt); !errors.Is(err, ErrNotFound) {
		t.Errorf("revoke missing: err = %v, want ErrNotFound", err)
	}
	got, err = s.GetSession(ctx, "s1")
	if err != nil {
		t.Fatal(err)
	}
	if got.RevokedAt == nil || !got.RevokedAt.Equal(revokedAt) {
		t.Errorf("RevokedAt = %v, want the first revocation %v", got.RevokedAt, revokedAt)
	}
	if got.Valid(odd) {
		t.Error("revoked session is valid")
	}

	// Expiry sweep: s3 expired, s4 not yet.
	if err := s.CreateSession(ctx, Session{ID: "s3", UserID: "u1", ExpiresAt: odd}); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateSession(ctx, Session{ID: "s4", UserID: "u1", ExpiresAt: odd.Add(time.Second)}); err != nil {
		t.Fatal(err)
	}
	n, err := s.DeleteExpiredSessions(ctx, odd)
	if err != nil || n != 1 {
		t.Fatalf("DeleteExpiredSessions = %d, %v; want 1", n, err)
	}
	if _, err := s.GetSession(ctx, "s3"); !errors.Is(err, ErrNotFound) {
		t.Errorf("expired session still present: %v", err)
	}
	if _, err := s.GetSession(ctx, "s4"); err != nil {
		t.Errorf("unexpired session removed: %v", err)
	}

	// Deleting the user cascades to its sessions.
	if _, err := s.w.ExecContext(ctx, `DELETE FROM users WHERE id = 'u1'`); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetSession(ctx, "s4"); !errors.Is(err, ErrNotFound) {
		t.Errorf("session survived its user: %v", err)
	}
}

func TestTakeOAuthState(t *testing.T) {
	ctx := context.Background()
	now := odd
	tests := []struct {
		name    string
		put     *OAuthState
		take    string
		wantErr error
	}{
		{"valid", &OAuthState{State: "st", Verifier: "v", ReturnTo: "/x", ExpiresAt: now.Add(time.Minute)}, "st", nil},
		{"expired", &OAuthState{State: "st", Verifier: "v", ExpiresAt: now}, "st", ErrNotFound},
		{"missing", nil, "st", ErrNotFound},
		{"other state", &OAuthState{State: "a", Verifier: "v", ExpiresAt: now.Add(time.Minute)}, "b", ErrNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := openTest(t)
			if tt.put != nil {
				if err := s.PutOAuthState(ctx, *tt.put, time.Time{}, 0); err != nil {
					t.Fatal(err)
				}
			}
			got, err := s.TakeOAuthState(ctx, tt.take, now)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("TakeOAuthState = %v, want %v", err, tt.wantErr)
			}
			if tt.wantErr == nil {
				want := *tt.put
				if got.State != want.State || got.Verifier != want.Verifier || got.ReturnTo != want.ReturnTo ||
					!got.ExpiresAt.Equal(want.ExpiresAt) {
					t.Errorf("got %+v, want %+v", got, want)
				}
			}
			// One-time: whatever happened, the taken state is gone.
			if _, err := s.TakeOAuthState(ctx, tt.take, now); !errors.Is(err, ErrNotFound) {
				t.Errorf("second take = %v, want ErrNotFound", err)
			}
		})
	}
}

func TestTakeOAuthStateSweepsExpired(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	for _, st := range []OAuthState{
		{State: "old", ExpiresAt: odd.Add(-time.Minute)},
		{State: "live", ExpiresAt: odd.Add(time.Minute)},
		{State: "take", ExpiresAt: odd.Add(time.Minute)},
	} {
		if err := s.PutOAuthState(ctx, st, time.Time{}, 0); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.PutOAuthState(ctx, OAuthState{State: "live"}, time.Time{}, 0); !errors.Is(err, ErrDuplicate) {
		t.Errorf("duplicate state: err = %v, want ErrDuplicate", err)
	}
	if _, err := s.TakeOAuthState(ctx, "take", odd); err != nil {
		t.Fatal(err)
	}
	var left []string
	rows, err := s.r.QueryContext(ctx, `SELECT state FROM oauth_states ORDER BY state`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var st string
		if err := rows.Scan(&st); err != nil {
			t.Fatal(err)
		}
		left = append(left, st)
	}
	if len(left) != 1 || left[0] != "live" {
		t.Errorf("states left = %v, want [live]", left)
	}
}

func TestAPITokens(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	fixedClock(s, odd.Add(time.Second)) // tokens without CreatedAt sort after t-active
	for _, id := range []string{"u1", "u2"} {
		if _, err := s.EnsureUser(ctx, User{ID: id, Login: id}); err != nil {
			t.Fatal(err)
		}
	}
	hash := func(secret string) []byte { h := sha256.Sum256([]byte(secret)); return h[:] }
	now := odd
	past, future := now.Add(-time.Second), now.Add(time.Hour)

	tokens := []APIToken{
		{ID: "t-active", UserID: "u1", Name: "ci", Prefix: "atl_a", Hash: hash("a"), CreatedAt: odd},
		{ID: "t-future", UserID: "u1", Name: "exp later", Prefix: "atl_b", Hash: hash("b"), ExpiresAt: &future},
		{ID: "t-expired", UserID: "u1", Name: "old", Prefix: "atl_c", Hash: hash("c"), ExpiresAt: &past},
		{ID: "t-revoked", UserID: "u1", Name: "gone", Prefix: "atl_d", Hash: hash("d")},
		{ID: "t-other", UserID: "u2", Name: "theirs", Prefix: "atl_e", Hash: hash("e")},
	}
	for _, tok := range tokens {
		if err := s.CreateAPIToken(ctx, tok); err != nil {
			t.Fatalf("CreateAPIToken(%s): %v", tok.ID, err)
		}
	}
	if err := s.CreateAPIToken(ctx, APIToken{ID: "t-dup", UserID: "u1", Hash: hash("a")}); !errors.Is(err, ErrDuplicate) {
		t.Errorf("duplicate hash: err = %v, want ErrDuplicate", err)
	}
	if err := s.RevokeAPIToken(ctx, "u1", "t-revoked", now); err != nil {
		t.Fatal(err)
	}
	if err := s.RevokeAPIToken(ctx, "u1", "t-revoked", now); err != nil {
		t.Errorf("second revoke: %v", err)
	}
	if err := s.RevokeAPIToken(ctx, "u1", "t-other", now); !errors.Is(err, ErrNotFound) {
		t.Errorf("revoking another user's token: err = %v, want ErrNotFound", err)
	}

	lookups := []struct {
		secret string
		wantID string // "" means ErrNotFound
	}{
		{"a", "t-active"},
		{"b", "t-future"},
		{"c", ""},
		{"d", ""},
		{"e", "t-other"},
		{"unknown", ""},
	}
	for _, l := range lookups {
		t.Run("lookup "+l.secret, func(t *testing.T) {
			got, err := s.LookupAPIToken(ctx, hash(l.secret), now)
			if l.wantID == "" {
				if !errors.Is(err, ErrNotFound) {
					t.Fatalf("err = %v, want ErrNotFound", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.ID != l.wantID || string(got.Hash) != string(hash(l.secret)) {
				t.Errorf("got %+v, want id %s", got, l.wantID)
			}
		})
	}
	if _, err := s.LookupAPIToken(ctx, hash("b"), future); !errors.Is(err, ErrNotFound) {
		t.Errorf("token used at its expiry instant: err = %v, want ErrNotFound", err)
	}

	if err := s.TouchAPIToken(ctx, "t-active", now); err != nil {
		t.Fatal(err)
	}
	if err := s.TouchAPIToken(ctx, "missing", now); !errors.Is(err, ErrNotFound) {
		t.Errorf("touch missing: err = %v, want ErrNotFound", err)
	}

	list, err := s.ListAPITokens(ctx, "u1")
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 4 || list[0].ID != "t-active" {
		t.Fatalf("ListAPITokens(u1) = %d tokens, first %+v; want 4 starting with t-active", len(list), list)
	}
	byID := map[string]APIToken{}
	for _, tok := range list {
		if tok.UserID != "u1" {
			t.Errorf("listed another user's token %s", tok.ID)
		}
		byID[tok.ID] = tok
	}
	if a := byID["t-active"]; a.LastUsedAt == nil || !a.LastUsedAt.Equal(now) || !a.CreatedAt.Equal(odd) {
		t.Errorf("t-active = %+v, want LastUsedAt %v", a, now)
	}
	if r := byID["t-revoked"]; r.RevokedAt == nil || !r.RevokedAt.Equal(now) {
		t.Errorf("t-revoked RevokedAt = %v", r.RevokedAt)
	}
	if f := byID["t-future"]; f.ExpiresAt == nil || !f.ExpiresAt.Equal(future) {
		t.Errorf("t-future ExpiresAt = %v", f.ExpiresAt)
	}
	empty, err := s.ListAPITokens(ctx, "nobody")
	if err != nil || empty == nil || len(empty) != 0 {
		t.Errorf("ListAPITokens(nobody) = %v, %v; want empty non-nil", empty, err)
	}
}
