package api_test

import (
	"path/filepath"

	"atelier/internal/config"
	netmock "atelier/internal/network/mock"
	rtmock "atelier/internal/runtime/mock"
	"atelier/internal/sandbox"
	stmock "atelier/internal/storage/mock"
	"atelier/internal/store"
)

func mockDrivers(cfg *config.Config) *sandbox.Drivers {
	return &sandbox.Drivers{
		Runtime: rtmock.New(),
		Network: netmock.New(),
		Volumes: stmock.New(filepath.Join(cfg.Sandbox.StateDir, "overlays")),
	}
}

func storeUser(login string, githubID int64) store.User {
	return store.User{GitHubID: githubID, Login: login}
}
