// Package secretbox seals small secrets kept at rest (a user's GitHub OAuth
// token today; workspace secrets later) with AES-256-GCM under the host's key
// file {dataDir}/secrets.key. The key is not derived from auth.jwtSecret:
// rotating the session secret must not be a reason to lose stored secrets,
// and a leaked database alone opens nothing.
package secretbox

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// KeyFile is the key's name under the data directory.
const KeyFile = "secrets.key"

// version prefixes every sealed value, so the format can change later.
const version = 1

// ErrOpen is returned for a value that was not sealed by this key (another
// host's key, a changed key file, a tampered or truncated value).
var ErrOpen = errors.New("sealed value cannot be opened with this key")

// Box seals and opens values with one key.
type Box struct {
	aead cipher.AEAD
}

// LoadOrCreate reads the key at path (64 hex characters), creating it with
// mode 0600 the first time. A key file readable by others is refused: it
// would open every secret in the database.
func LoadOrCreate(path string) (*Box, error) {
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		if err := create(path); err != nil {
			return nil, err
		}
	}
	return Load(path)
}

// Load reads the key at path (64 hex characters, mode 0600), which must
// exist: a key given to several managers is made once, by the operator.
func Load(path string) (*Box, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read secrets key: %w", err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("stat secrets key: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("secrets key %s has mode %s: it must be readable by its owner only (chmod 600)", path, fi.Mode().Perm())
	}
	key, err := hex.DecodeString(strings.TrimSpace(string(b)))
	if err != nil || len(key) != 32 {
		return nil, fmt.Errorf("secrets key %s: want 64 hex characters", path)
	}
	return New(key)
}

// New builds a Box from a 32-byte key.
func New(key []byte) (*Box, error) {
	if len(key) != 32 {
		return nil, fmt.Errorf("secretbox: key is %d bytes, want 32", len(key))
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("secretbox: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("secretbox: %w", err)
	}
	return &Box{aead: aead}, nil
}

// Seal encrypts plaintext. aad binds the value to its place (a user id), so
// a sealed value copied to another row does not open there.
func (b *Box) Seal(plaintext, aad []byte) ([]byte, error) {
	nonce := make([]byte, b.aead.NonceSize(), 1+b.aead.NonceSize()+len(plaintext)+b.aead.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		return nil, fmt.Errorf("seal: read random: %w", err)
	}
	out := append([]byte{version}, nonce...)
	return b.aead.Seal(out, nonce, plaintext, aad), nil
}

// Open decrypts a value made by Seal with the same aad; ErrOpen otherwise.
func (b *Box) Open(sealed, aad []byte) ([]byte, error) {
	n := b.aead.NonceSize()
	if len(sealed) < 1+n+b.aead.Overhead() || sealed[0] != version {
		return nil, ErrOpen
	}
	pt, err := b.aead.Open(nil, sealed[1:1+n], sealed[1+n:], aad)
	if err != nil {
		return nil, ErrOpen
	}
	return pt, nil
}

// create writes a new key through a temporary file and a hard link, so a
// concurrent creator never leaves a half-written key and the first wins.
func create(path string) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create secrets key dir: %w", err)
	}
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return fmt.Errorf("generate secrets key: %w", err)
	}
	tmp, err := os.CreateTemp(dir, ".secrets-key-*")
	if err != nil {
		return fmt.Errorf("create secrets key: %w", err)
	}
	defer os.Remove(tmp.Name())
	_, werr := tmp.WriteString(hex.EncodeToString(key) + "\n")
	if werr == nil {
		werr = tmp.Chmod(0o600)
	}
	if werr == nil {
		werr = tmp.Sync()
	}
	if cerr := tmp.Close(); werr == nil {
		werr = cerr
	}
	if werr != nil {
		return fmt.Errorf("write secrets key: %w", werr)
	}
	if err := os.Link(tmp.Name(), path); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("install secrets key %s: %w", path, err)
	}
	return nil
}
