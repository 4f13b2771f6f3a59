package auth

import (
	"testing"

	"atelier/internal/auth/githubtest"
)

// githubStub adapts the shared GitHub stand-in (githubtest) to the names
// these tests use.
type githubStub struct {
	*githubtest.Server
	srv          struct{ URL string }
	clientID     string
	clientSecret string
}

func newGitHubStub(t *testing.T) *githubStub {
	t.Helper()
	g := githubtest.New(t)
	s := &githubStub{Server: g, clientID: githubtest.ClientID, clientSecret: githubtest.ClientSecret}
	s.srv.URL = g.URL
	return s
}

func (g *githubStub) addUser(id int64, login string)         { g.AddUser(id, login) }
func (g *githubStub) setMembership(org, login, state string) { g.SetMembership(org, login, state) }
func (g *githubStub) actAs(login string)                     { g.ActAs(login) }
func (g *githubStub) setDeny(d bool)                         { g.SetDeny(d) }
func (g *githubStub) stats() (int, []string, []string)       { return g.Stats() }
