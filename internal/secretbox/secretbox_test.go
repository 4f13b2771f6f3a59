package secretbox

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

func TestLoadOrCreate(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sub", KeyFile)
	// Concurrent first starts agree on one key.
	var wg sync.WaitGroup
	boxes := make([]*Box, 8)
	errs := make([]error, 8)
	for i := range boxes {
		wg.Add(1)
		go func() { defer wg.Done(); boxes[i], errs[i] = LoadOrCreate(path) }()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	sealed, err := boxes[0].Seal([]byte("gho_secret"), []byte("user-1"))
	if err != nil {
		t.Fatal(err)
	}
	for i, b := range boxes {
		if pt, err := b.Open(sealed, []byte("user-1")); err != nil || string(pt) != "gho_secret" {
			t.Fatalf("box %d: %q, %v", i, pt, err)
		}
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v, %v", fi.Mode(), err)
	}
	if bytes.Contains(sealed, []byte("gho_secret")) {
		t.Fatal("plaintext visible in the sealed value")
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Fatalf("temporary files left: %v", entries)
	}

	// The same key reloads; a loosened mode is refused.
	again, err := LoadOrCreate(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := again.Open(sealed, []byte("user-1")); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreate(path); err == nil {
		t.Fatal("a world-readable key was accepted")
	}
	bad := filepath.Join(dir, "bad.key")
	if err := os.WriteFile(bad, []byte("short\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreate(bad); err == nil {
		t.Fatal("a malformed key was accepted")
	}
}

func TestOpenRefuses(t *testing.T) {
	k1, k2 := bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 32)
	b1, _ := New(k1)
	b2, _ := New(k2)
	sealed, err := b1.Seal([]byte("v"), []byte("a"))
	if err != nil {
		t.Fatal(err)
	}
	flipped := bytes.Clone(sealed)
	flipped[len(flipped)-1] ^= 1
	cases := map[string]func() ([]byte, error){
		"other key":     func() ([]byte, error) { return b2.Open(sealed, []byte("a")) },
		"other aad":     func() ([]byte, error) { return b1.Open(sealed, []byte("b")) },
		"tampered":      func() ([]byte, error) { return b1.Open(flipped, []byte("a")) },
		"truncated":     func() ([]byte, error) { return b1.Open(sealed[:10], []byte("a")) },
		"empty":         func() ([]byte, error) { return b1.Open(nil, []byte("a")) },
		"other version": func() ([]byte, error) { c := bytes.Clone(sealed); c[0] = 9; return b1.Open(c, []byte("a")) },
	}
	for name, f := range cases {
		if _, err := f(); !errors.Is(err, ErrOpen) {
			t.Errorf("%s: %v, want ErrOpen", name, err)
		}
	}
	if _, err := New(k1[:16]); err == nil {
		t.Error("a 16-byte key was accepted")
	}
}
