package sshproxy

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"

	"golang.org/x/crypto/ssh"
)

// HostKeyFile is the proxy's host key under the data directory.
const HostKeyFile = "ssh_host_ed25519_key"

// LoadOrCreateHostKey reads the ed25519 host key at path, creating it (mode
// 0600) the first time. The key must survive restarts: a new one would make
// every user's known_hosts entry fail. A key readable by others is
// tightened to 0600 with a warning.
func LoadOrCreateHostKey(path string, log *slog.Logger) (ssh.Signer, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		if err := createHostKey(path); err != nil {
			return nil, err
		}
		log.Info("ssh proxy host key created", "path", path)
		b, err = os.ReadFile(path)
	}
	if err != nil {
		return nil, fmt.Errorf("read ssh host key: %w", err)
	}
	if fi, err := os.Stat(path); err == nil && fi.Mode().Perm()&0o077 != 0 {
		log.Warn("ssh host key was readable by others; setting mode 0600", "path", path, "mode", fi.Mode().Perm().String())
		if err := os.Chmod(path, 0o600); err != nil {
			return nil, fmt.Errorf("restrict ssh host key %s: %w", path, err)
		}
	}
	signer, err := ssh.ParsePrivateKey(b)
	if err != nil {
		return nil, fmt.Errorf("parse ssh host key %s: %w", path, err)
	}
	return signer, nil
}

// createHostKey writes a new key through a temporary file and a hard link,
// so a concurrent creator never leaves a half-written key and the first
// one wins.
func createHostKey(path string) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create ssh host key dir: %w", err)
	}
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return fmt.Errorf("generate ssh host key: %w", err)
	}
	blk, err := ssh.MarshalPrivateKey(priv, "atelier ssh proxy")
	if err != nil {
		return fmt.Errorf("encode ssh host key: %w", err)
	}
	tmp, err := os.CreateTemp(dir, ".ssh_host_key-*")
	if err != nil {
		return fmt.Errorf("create ssh host key: %w", err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return fmt.Errorf("create ssh host key: %w", err)
	}
	if _, err := tmp.Write(pem.EncodeToMemory(blk)); err != nil {
		tmp.Close()
		return fmt.Errorf("write ssh host key: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("write ssh host key: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write ssh host key: %w", err)
	}
	if err := os.Link(tmp.Name(), path); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("install ssh host key %s: %w", path, err)
	}
	return nil
}
