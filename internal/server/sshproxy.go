package server

import (
	"context"
	"net"
	"strconv"
)

// listenSSH binds the SSH proxy on server.host:domain.ssh.port. A port that
// cannot be bound leaves SSH unavailable, loudly (and /health/ready
// failing), but keeps the manager serving: the API and the sandboxes do not
// depend on it.
func (s *Server) listenSSH() net.Listener {
	addr := net.JoinHostPort(s.Config.Server.Host, strconv.Itoa(s.Config.Domain.SSH.Port))
	ln, err := net.Listen("tcp", addr)
	s.health.setSSH(addr, err)
	if err != nil {
		s.Log.Error("ssh proxy not listening: ssh access to sandboxes is unavailable", "addr", addr, "err", err)
		return nil
	}
	return ln
}

// serveSSH runs the SSH proxy on ln until ctx is done.
func (s *Server) serveSSH(ctx context.Context, ln net.Listener) {
	if err := s.SSHProxy.Serve(ctx, ln); err != nil {
		s.Log.Error("ssh proxy stopped", "err", err)
	}
}
