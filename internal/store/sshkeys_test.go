package store

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestSSHKeys(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	fixedClock(s, odd)
	for _, id := range []string{"alice", "bob"} {
		if _, err := s.EnsureUser(ctx, User{ID: id, Login: id}); err != nil {
			t.Fatal(err)
		}
	}
	past, future := odd.Add(-time.Hour), odd.Add(time.Hour)
	created := odd
	mk := func(user, fp string, exp *time.Time) SSHKey {
		t.Helper()
		fixedClock(s, created)
		created = created.Add(time.Second)
		k, err := s.CreateSSHKey(ctx, SSHKey{UserID: user, Name: "k-" + fp, PublicKey: "ssh-ed25519 AAAA" + fp,
			Fingerprint: "SHA256:" + fp, Type: "ssh-ed25519", ExpiresAt: exp})
		if err != nil {
			t.Fatalf("create %s/%s: %v", user, fp, err)
		}
		return k
	}
	a1 := mk("alice", "one", nil)
	if len(a1.ID) != sshKeyIDLen || !a1.CreatedAt.Equal(odd) || a1.CreatedAt.Location() != time.UTC || a1.ExpiresAt != nil {
		t.Fatalf("created key = %+v", a1)
	}
	a2 := mk("alice", "two", &future)
	mk("alice", "old", &past)
	b1 := mk("bob", "one", nil) // the same key under another account is allowed

	if _, err := s.CreateSSHKey(ctx, SSHKey{UserID: "alice", PublicKey: "x", Fingerprint: "SHA256:one", Type: "ssh-ed25519"}); !errors.Is(err, ErrDuplicate) {
		t.Errorf("duplicate fingerprint for one user: err = %v, want ErrDuplicate", err)
	}
	if _, err := s.CreateSSHKey(ctx, SSHKey{UserID: "ghost", PublicKey: "x", Fingerprint: "SHA256:z", Type: "ssh-ed25519"}); err == nil {
		t.Error("key for a user that does not exist was stored")
	}
	if _, err := s.CreateSSHKey(ctx, SSHKey{UserID: "alice"}); err == nil {
		t.Error("key without fingerprint was stored")
	}

	list, err := s.ListSSHKeys(ctx, "alice")
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 3 || list[0].ID != a1.ID || list[1].ID != a2.ID {
		t.Fatalf("alice's keys = %+v", list)
	}
	if list[1].ExpiresAt == nil || !list[1].ExpiresAt.Equal(future) {
		t.Errorf("expiry came back as %v, want %v", list[1].ExpiresAt, future)
	}

	for _, tc := range []struct {
		fp    string
		now   time.Time
		users []string
	}{
		{"SHA256:one", odd, []string{"alice", "bob"}},
		{"SHA256:two", odd, []string{"alice"}},
		{"SHA256:two", future, nil}, // expiry is exclusive: at expiresAt the key is dead
		{"SHA256:old", odd, nil},
		{"SHA256:none", odd, nil},
	} {
		got, err := s.LookupSSHKeys(ctx, tc.fp, tc.now)
		if err != nil {
			t.Fatal(err)
		}
		var users []string
		for _, k := range got {
			users = append(users, k.UserID)
			if !k.Usable(tc.now) {
				t.Errorf("lookup %s returned an unusable key %+v", tc.fp, k)
			}
		}
		if len(users) != len(tc.users) || (len(users) > 0 && (users[0] != tc.users[0] || users[len(users)-1] != tc.users[len(tc.users)-1])) {
			t.Errorf("lookup %s at %v: users %v, want %v", tc.fp, tc.now, users, tc.users)
		}
	}

	if err := s.DeleteSSHKey(ctx, "alice", b1.ID); !errors.Is(err, ErrNotFound) {
		t.Errorf("deleting another user's key: err = %v, want ErrNotFound", err)
	}
	if err := s.DeleteSSHKey(ctx, "bob", b1.ID); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteSSHKey(ctx, "bob", b1.ID); !errors.Is(err, ErrNotFound) {
		t.Errorf("deleting twice: err = %v, want ErrNotFound", err)
	}
	got, _ := s.LookupSSHKeys(ctx, "SHA256:one", odd)
	if len(got) != 1 || got[0].UserID != "alice" {
		t.Errorf("after bob's delete, lookup = %+v", got)
	}
}
