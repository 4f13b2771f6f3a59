package server

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"

	"atelier/internal/config"
	"atelier/internal/secretbox"
	"atelier/internal/store"
)

// secretsCheckKey holds, in settings, a value sealed with the key of the
// first manager that opened the store: a manager whose key cannot open it
// would seal new secrets that the others cannot open, and could open none
// of theirs, so it refuses to start instead.
const secretsCheckKey = "secrets:check"

var secretsCheck = []byte("atelier secrets key check v1")

// openSecrets loads the key that seals secrets at rest and checks it
// against the store.
func openSecrets(ctx context.Context, cfg *config.Config, st *store.Store) (*secretbox.Box, error) {
	path := cfg.Advanced.Server.SecretsKeyFile
	var (
		box *secretbox.Box
		err error
	)
	if path == "" {
		path = filepath.Join(cfg.Server.DataDir, secretbox.KeyFile)
		box, err = secretbox.LoadOrCreate(path)
	} else {
		box, err = secretbox.Load(path)
		if err != nil {
			err = fmt.Errorf("advanced.server.secretsKeyFile (ATELIER_SECRETS_KEY_FILE): %w; make one with: openssl rand -hex 32 > %s; chmod 600 %s", err, path, path)
		}
	}
	if err != nil {
		return nil, err
	}
	var sealed []byte
	found, err := st.GetSetting(ctx, secretsCheckKey, &sealed)
	if err != nil {
		return nil, fmt.Errorf("check the secrets key: %w", err)
	}
	if !found {
		mine, err := box.Seal(secretsCheck, []byte(secretsCheckKey))
		if err != nil {
			return nil, fmt.Errorf("check the secrets key: %w", err)
		}
		won, err := st.PutSettingIfAbsent(ctx, secretsCheckKey, mine)
		if err != nil {
			return nil, fmt.Errorf("check the secrets key: %w", err)
		}
		if won {
			return box, nil
		}
		// Another manager wrote its check first: ours must open it.
		if _, err := st.GetSetting(ctx, secretsCheckKey, &sealed); err != nil {
			return nil, fmt.Errorf("check the secrets key: %w", err)
		}
	}
	pt, err := box.Open(sealed, []byte(secretsCheckKey))
	if errors.Is(err, secretbox.ErrOpen) || (err == nil && string(pt) != string(secretsCheck)) {
		return nil, fmt.Errorf("secrets key %s does not open the values sealed in this store (%s backend): every manager sharing a store needs the same key; "+
			"give each the same file with advanced.server.secretsKeyFile (ATELIER_SECRETS_KEY_FILE)", path, st.Backend())
	}
	if err != nil {
		return nil, fmt.Errorf("check the secrets key: %w", err)
	}
	return box, nil
}
