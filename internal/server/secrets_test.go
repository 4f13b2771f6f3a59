package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"atelier/internal/config"
	netmock "atelier/internal/network/mock"
	rtmock "atelier/internal/runtime/mock"
	"atelier/internal/sandbox"
	stmock "atelier/internal/storage/mock"
	"atelier/internal/testenv"
)

func writeKey(t *testing.T, path string) {
	t.Helper()
	k := make([]byte, 32)
	rand.Read(k)
	if err := os.WriteFile(path, []byte(hex.EncodeToString(k)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
}

// Managers sharing a store must share the key that seals its secrets: a
// manager whose key does not open the store's check value refuses to
// start, naming the setting; one given the same file starts. The same
// holds for one manager whose {dataDir}/secrets.key was replaced.
func TestManagerRefusesAKeyThatDoesNotOpenTheStore(t *testing.T) {
	shared := filepath.Join(t.TempDir(), "shared.key")
	writeKey(t, shared)
	other := filepath.Join(t.TempDir(), "other.key")
	writeKey(t, other)
	newManager := func(cfg *config.Config) error {
		drv := &sandbox.Drivers{Runtime: rtmock.New(), Network: netmock.New(), Volumes: stmock.New(t.TempDir())}
		srv, err := New(context.Background(), cfg, Options{Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Drivers: drv})
		if err == nil {
			srv.Store.Close()
		}
		return err
	}
	t.Run("postgres", func(t *testing.T) {
		url := testenv.PostgresDB(t)
		replicaCfg := func(key string) *config.Config {
			cfg := productionConfig(t)
			cfg.Advanced.Server.Database.URL = url
			cfg.Advanced.Server.SecretsKeyFile = key
			return cfg
		}
		if err := newManager(replicaCfg(shared)); err != nil {
			t.Fatalf("first replica: %v", err)
		}
		if err := newManager(replicaCfg(shared)); err != nil {
			t.Fatalf("a replica with the same key file: %v", err)
		}
		for name, key := range map[string]string{"another key file": other, "its own data dir's key": ""} {
			err := newManager(replicaCfg(key))
			if err == nil || !strings.Contains(err.Error(), "does not open the values sealed in this store") ||
				!strings.Contains(err.Error(), "advanced.server.secretsKeyFile") {
				t.Errorf("a replica with %s: %v, want a refusal naming advanced.server.secretsKeyFile", name, err)
			}
		}
		missing := filepath.Join(t.TempDir(), "none.key")
		err := newManager(replicaCfg(missing))
		if err == nil || !strings.Contains(err.Error(), "ATELIER_SECRETS_KEY_FILE") || !strings.Contains(err.Error(), "openssl rand -hex 32") {
			t.Errorf("a missing key file: %v, want a refusal saying how to make one", err)
		}
		if _, serr := os.Stat(missing); !os.IsNotExist(serr) {
			t.Error("a configured key file was created")
		}
	})
	t.Run("sqlite", func(t *testing.T) {
		cfg := productionConfig(t)
		if err := newManager(cfg); err != nil {
			t.Fatal(err)
		}
		if err := newManager(cfg); err != nil {
			t.Fatalf("restart with the same key: %v", err)
		}
		writeKey(t, filepath.Join(cfg.Server.DataDir, "secrets.key"))
		if err := newManager(cfg); err == nil || !strings.Contains(err.Error(), "does not open") {
			t.Fatalf("a replaced secrets.key: %v, want a refusal", err)
		}
	})
}
