package api

import (
	"context"
	"errors"
	"net/http"
	"net/url"

	"github.com/danielgtaylor/huma/v2"

	"atelier/internal/auth"
	"atelier/internal/edge"
	"atelier/internal/sandbox"
	"atelier/internal/store"
)

// Dev commands are exposed explicitly: the agent's dev start (proxied as
// is) runs the process, POST .../dev/{name}/expose routes its hosts. The
// routes outlive the process and the sandbox's stops, until DELETE
// .../expose or the sandbox's destruction.

type exposeAlias struct {
	Alias string `json:"alias" pattern:"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$" doc:"DNS label; served at dev-{name}-{alias}-{id}."`
	Port  int    `json:"port" minimum:"1" maximum:"65535" doc:"Guest port of this alias."`
}

type exposeBody struct {
	_       struct{}      `json:"-" additionalProperties:"false"`
	Port    int           `json:"port,omitempty" minimum:"0" maximum:"65535" doc:"Guest port; 0 or absent: the port the dev command reported when it was started."`
	Aliases []exposeAlias `json:"aliases,omitempty" maxItems:"16" doc:"Extra hosts dev-{name}-{alias}-{id}, each to its own port."`
	Default bool          `json:"default,omitempty" doc:"Also serve the command at dev-{id}."`
	Public  bool          `json:"public,omitempty" doc:"Reachable by anyone with the URL, without login. Everything else needs the owner's login."`
}

type exposeInput struct {
	ID   string      `path:"id" pattern:"^[a-z0-9]{12}$" doc:"Sandbox id."`
	Name string      `path:"name" pattern:"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$" doc:"Dev command name (a DNS label)."`
	Body *exposeBody `required:"false"`
}

type devNameInput struct {
	ID   string `path:"id" pattern:"^[a-z0-9]{12}$" doc:"Sandbox id."`
	Name string `path:"name" pattern:"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$" doc:"Dev command name."`
}

type routeView struct {
	Host   string `json:"host"`
	URL    string `json:"url"`
	Kind   string `json:"kind" enum:"vscode,opencode,browser,dev"`
	Name   string `json:"name,omitempty"`
	Alias  string `json:"alias,omitempty"`
	Port   int    `json:"port"`
	Public bool   `json:"public"`
}

type routesOutput struct {
	Body struct {
		Routes []routeView `json:"routes"`
	}
}

func (s *Server) routesOut(rs []store.Route) *routesOutput {
	out := &routesOutput{}
	out.Body.Routes = make([]routeView, 0, len(rs))
	for _, r := range rs {
		out.Body.Routes = append(out.Body.Routes, routeView{
			Host: r.Host, URL: s.d.Edge.URL(r.Host), Kind: r.Kind, Name: r.Name, Alias: r.Alias, Port: r.Port, Public: r.Public,
		})
	}
	return out
}

var errNoEdge = newProblem(http.StatusServiceUnavailable, "unavailable", "the HTTP edge is not configured")

func (s *Server) registerEdge() {
	s.registerRaw("GET", "/auth/edge", true,
		"Sign in to a sandbox host: for the sandbox's owner, redirects to the host with a one-time code (the host then sets its own cookie).",
		s.d.Auth.LimitLogin(http.HandlerFunc(s.edgeLogin)))

	tags := []string{"edge"}
	errs := []int{http.StatusBadRequest, http.StatusUnauthorized, http.StatusNotFound, http.StatusConflict}
	huma.Register(s.api, huma.Operation{
		OperationID: "expose-dev", Method: http.MethodPost, Path: "/api/sandboxes/{id}/dev/{name}/expose", Tags: tags,
		Summary: "Route a dev command's hosts", Security: securityAuthed, Errors: append(errs, http.StatusTooManyRequests),
		Description: "Serves the dev command at dev-{name}-{id} (and dev-{id} when default, and dev-{name}-{alias}-{id} per alias), " +
			"replacing its previous hosts. Routes are stored and survive manager restarts; a host held by another command is 409; " +
			"more dev hosts than domain.maxDevHostsPerSandbox or domain.maxDevHostsPerUser allow is 429 (quota_exceeded, naming the key).",
	}, func(ctx context.Context, in *exposeInput) (*routesOutput, error) {
		if s.d.Edge == nil {
			return nil, errNoEdge
		}
		if _, err := s.owned(ctx, in.ID); err != nil {
			return nil, err
		}
		b := exposeBody{}
		if in.Body != nil {
			b = *in.Body
		}
		if b.Port == 0 {
			port, err := s.devPort(ctx, in.ID, in.Name)
			if err != nil {
				return nil, err
			}
			b.Port = port
		}
		d := edge.DevExposure{Name: in.Name, Port: b.Port, Default: b.Default, Public: b.Public}
		for _, a := range b.Aliases {
			d.Aliases = append(d.Aliases, edge.DevAlias{Alias: a.Alias, Port: a.Port})
		}
		rs, err := s.d.Edge.ExposeDev(ctx, in.ID, d)
		if errors.Is(err, edge.ErrMockPort) {
			return nil, newProblem(http.StatusConflict, "port_in_use", err.Error(),
				&huma.ErrorDetail{Location: "body.port", Message: err.Error()})
		}
		var qe *edge.QuotaError
		if errors.As(err, &qe) {
			p := newProblem(http.StatusTooManyRequests, "quota_exceeded", qe.Error(),
				&huma.ErrorDetail{Location: qe.Key, Message: qe.Error(), Value: qe.Limit})
			p.Quota = &QuotaDetail{Name: qe.Key, Limit: float64(qe.Limit), Used: float64(qe.Held),
				Requested: float64(qe.Wanted - qe.Held), Unit: "hosts"}
			return nil, p
		}
		if err != nil {
			return nil, toProblem(ctx, s.d.Log, err)
		}
		return s.routesOut(rs), nil
	})

	huma.Register(s.api, huma.Operation{
		OperationID: "unexpose-dev", Method: http.MethodDelete, Path: "/api/sandboxes/{id}/dev/{name}/expose", Tags: tags,
		Summary: "Remove a dev command's hosts", Security: securityAuthed, Errors: errs[1:3],
		DefaultStatus: http.StatusNoContent,
	}, func(ctx context.Context, in *devNameInput) (*struct{}, error) {
		if s.d.Edge == nil {
			return nil, errNoEdge
		}
		if _, err := s.owned(ctx, in.ID); err != nil {
			return nil, err
		}
		if err := s.d.Edge.UnexposeDev(ctx, in.ID, in.Name); err != nil {
			return nil, toProblem(ctx, s.d.Log, err)
		}
		return nil, nil
	})

	huma.Register(s.api, huma.Operation{
		OperationID: "list-routes", Method: http.MethodGet, Path: "/api/sandboxes/{id}/routes", Tags: tags,
		Summary: "A sandbox's hosts at the edge", Security: securityAuthed, Errors: errs[1:3],
	}, func(ctx context.Context, in *sandboxIDInput) (*routesOutput, error) {
		if s.d.Edge == nil {
			return nil, errNoEdge
		}
		if _, err := s.managed(ctx, in.ID); err != nil {
			return nil, err
		}
		rs, err := s.d.Edge.Routes(ctx, in.ID)
		if err != nil {
			return nil, toProblem(ctx, s.d.Log, err)
		}
		return s.routesOut(rs), nil
	})
}

// devPort is the port a running dev command reported when it was started.
func (s *Server) devPort(ctx context.Context, id, name string) (int, error) {
	c, err := s.d.Sandboxes.Agent(ctx, id)
	if errors.Is(err, sandbox.ErrNoAgent) {
		return 0, newProblem(http.StatusServiceUnavailable, "unavailable", err.Error())
	}
	if err != nil {
		return 0, toProblem(ctx, s.d.Log, err)
	}
	st, err := c.DevCommand(ctx, name)
	if err != nil {
		return 0, newProblem(http.StatusNotFound, "not_found", "dev command "+name+" not found: give a port, or start the command with one")
	}
	if st.Port == 0 {
		return 0, newProblem(http.StatusBadRequest, "invalid_input", "validation failed: body.port: the dev command has no port; give one",
			&huma.ErrorDetail{Location: "body.port", Message: "required: the dev command reported no port"})
	}
	return st.Port, nil
}

// edgeLogin is the dashboard half of the sandbox host login: GET
// /auth/edge?host=&next=. A visitor without a session is sent to the GitHub
// login first and comes back here; the owner of the host's sandbox is sent
// to the host with a one-time code. Another user's sandbox is reported as
// unknown, so ids cannot be probed.
func (s *Server) edgeLogin(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	ctx := r.Context()
	if s.d.Edge == nil {
		writeProblem(w, errNoEdge)
		return
	}
	q := r.URL.Query()
	host := q.Get("host")
	unknown := newProblem(http.StatusNotFound, "not_found", "unknown sandbox host")
	id, ok := s.d.Edge.HostSandbox(host)
	if host == "" || !ok {
		writeProblem(w, unknown)
		return
	}
	next := q.Get("next")
	if len(next) > auth.MaxNextLen {
		next = "/" // a page with a huge URL still gets its login, at the host's root
	}
	p, err := s.d.Auth.Authenticate(r)
	if errors.Is(err, auth.ErrUnauthenticated) {
		// Come back here after the GitHub login, through a dashboard path
		// that fits the login's next.
		back := r.URL.RequestURI()
		if len(back) > auth.MaxNextLen {
			back = "/auth/edge?" + url.Values{"host": {host}, "next": {"/"}}.Encode()
		}
		http.Redirect(w, r, "/auth/github?next="+url.QueryEscape(back), http.StatusFound)
		return
	}
	if err != nil {
		writeProblem(w, toProblem(ctx, s.d.Log, err).(*Problem))
		return
	}
	sb, err := s.d.Sandboxes.Get(ctx, id)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		writeProblem(w, toProblem(ctx, s.d.Log, err).(*Problem))
		return
	}
	// The owner only: a host cookie opens the sandbox's own code and data,
	// which an admin role does not (see managed and owned).
	if err != nil || sb.OwnerID != p.User.ID {
		writeProblem(w, unknown)
		return
	}
	u, err := s.d.Edge.Grant(ctx, host, next, p)
	switch {
	case errors.Is(err, edge.ErrNotBrowser):
		writeProblem(w, newProblem(http.StatusForbidden, "forbidden", err.Error()))
		return
	case errors.Is(err, edge.ErrUnknownHost):
		writeProblem(w, unknown)
		return
	case err != nil:
		writeProblem(w, toProblem(ctx, s.d.Log, err).(*Problem))
		return
	}
	http.Redirect(w, r, u, http.StatusFound)
}
