package server

import (
	"context"
	"net"
	"strconv"
)

// serveSSH runs the SSH proxy on server.host:domain.ssh.port until ctx is
// done. A port that cannot be bound leaves SSH unavailable, loudly, but
// keeps the manager serving: the API and the sandboxes do not depend on it.
func (s *Server) serveSSH(ctx context.Context) {
	addr := net.JoinHostPort(s.Config.Server.Host, strconv.Itoa(s.Config.Domain.SSH.Port))
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		s.Log.Error("ssh proxy not listening: ssh access to sandboxes is unavailable", "addr", addr, "err", err)
		return
	}
	if err := s.SSHProxy.Serve(ctx, ln); err != nil {
		s.Log.Error("ssh proxy stopped", "err", err)
	}
}
