package server

import (
	"log/slog"
	"os/user"
	"strconv"

	"atelier/internal/config"
)

// bindConfig returns the configuration the manager runs with: a copy whose
// server.host is the address every listener binds (config.ListenHost), so
// the API, the edge and the SSH proxy follow one decision. In mock mode that
// is loopback unless the operator opted in, and then the log says loudly
// what it means.
func bindConfig(cfg *config.Config, log *slog.Logger) *config.Config {
	cp := *cfg
	cp.Server.Host = cfg.ListenHost()
	if cp.Server.Host != cfg.Server.Host {
		log.Info("mock mode listens on loopback only; set server.allowRemoteMock (ATELIER_ALLOW_REMOTE_MOCK=true) to listen on "+cfg.Server.Host,
			"host", cp.Server.Host)
	}
	if cp.RemoteMock() {
		who := "this user"
		if u, err := user.Current(); err == nil {
			who = "user " + u.Username
		}
		log.Warn("INSECURE: mock mode is listening beyond loopback (server.allowRemoteMock): it has no login, and anyone who can reach "+
			cp.Server.Host+" on ports "+strconv.Itoa(cp.Server.Port)+" (API), "+strconv.Itoa(cp.Domain.HTTPPort)+" (edge) and "+
			strconv.Itoa(cp.Domain.SSH.Port)+" (SSH) can run any command on this machine as "+who,
			"host", cp.Server.Host)
	}
	return &cp
}
