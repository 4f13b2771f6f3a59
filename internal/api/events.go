package api

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/danielgtaylor/huma/v2"

	"atelier/internal/store"
)

// HeartbeatInterval is how often an idle event stream sends a comment line,
// so proxies keep the connection and clients notice a dead server.
var HeartbeatInterval = 15 * time.Second

type eventsInput struct {
	LastEventID string `header:"Last-Event-ID" doc:"Resume after this event id (sent by EventSource on reconnect)."`
	Since       string `query:"since" doc:"Resume after this event id; Last-Event-ID wins when both are set."`
}

func (s *Server) registerEvents() {
	op := huma.Operation{
		OperationID: "events", Method: http.MethodGet, Path: "/api/events", Tags: []string{"events"},
		Summary: "Server-Sent Events for every sandbox state change",
		Description: "Events: sandbox.created, sandbox.updated, sandbox.deleted (data: the sandbox), and reset " +
			"when the requested Last-Event-ID is older than the retained history (refetch the list). Admins also get " +
			"system.reconciled (data: what a reconciler pass fixed, as POST /api/system/cleanup answers). Everyone gets " +
			"image.build (a build started or changed stage), image.built and image.failed (data: the build, as in " +
			"GET /api/images builds). The owner gets workspace.pull when the background fast-forward pull of a sandbox " +
			"created from a prebuild is done (data: ownerId, sandboxId, workspaceId, and per repository path, branch, " +
			"result updated|current|skipped|failed, from, to, detail). A comment " +
			"line is sent as a heartbeat every 15 s.",
		Security: securityAuthed,
		Errors:   []int{http.StatusBadRequest, http.StatusUnauthorized},
		Responses: map[string]*huma.Response{"200": {
			Description: "An event stream",
			Content:     map[string]*huma.MediaType{"text/event-stream": {Schema: &huma.Schema{Type: "string"}}},
		}},
	}
	huma.Register(s.api, op, func(ctx context.Context, in *eventsInput) (*huma.StreamResponse, error) {
		raw := in.Since
		if in.LastEventID != "" {
			raw = in.LastEventID
		}
		var after int64
		if raw != "" {
			v, err := strconv.ParseInt(raw, 10, 64)
			if err != nil || v < 0 {
				return nil, newProblem(http.StatusBadRequest, "invalid_input", "validation failed: Last-Event-ID: must be a non-negative integer")
			}
			after = v
		}
		p := principal(ctx)
		// Subscribe before replaying so nothing published in between is lost;
		// live events already replayed are skipped by id.
		live, cancel := s.d.Bus.Subscribe()
		replay, gap, err := s.d.Bus.Replay(ctx, after, 10000)
		if err != nil {
			cancel()
			return nil, toProblem(ctx, s.d.Log, err)
		}
		return &huma.StreamResponse{Body: func(hctx huma.Context) {
			defer cancel()
			s.streams.Add(1)
			defer s.streams.Add(-1)
			hctx.SetHeader("Content-Type", "text/event-stream")
			hctx.SetHeader("Cache-Control", "no-cache")
			hctx.SetHeader("X-Accel-Buffering", "no")
			w := hctx.BodyWriter()
			flush := func() {
				if f, ok := w.(http.Flusher); ok {
					f.Flush()
				}
			}
			fmt.Fprint(w, "retry: 2000\n\n")
			last := after
			if raw != "" && gap {
				fmt.Fprint(w, "event: reset\ndata: {}\n\n")
			}
			for _, ev := range replay {
				if !visible(p.Admin, p.User.ID, ev) {
					last = ev.ID
					continue
				}
				if writeEvent(w, ev) != nil {
					return
				}
				last = ev.ID
			}
			flush()
			tick := time.NewTicker(HeartbeatInterval)
			defer tick.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-s.closing:
					return
				case <-tick.C:
					if _, err := fmt.Fprint(w, ": heartbeat\n\n"); err != nil {
						return
					}
					flush()
				case ev, ok := <-live:
					if !ok {
						// Dropped as a slow consumer: end the stream; the client resumes with Last-Event-ID.
						return
					}
					if ev.ID <= last {
						continue
					}
					last = ev.ID
					if !visible(p.Admin, p.User.ID, ev) {
						continue
					}
					if writeEvent(w, ev) != nil {
						return
					}
					flush()
				}
			}
		}}, nil
	})
}

// visible reports whether a user may see an event: admins see all, others
// only events about their own sandboxes, never a host-wide system.* event
// (it may name other users' sandboxes), whatever its data says.
func visible(admin bool, userID string, ev store.Event) bool {
	if admin {
		return true
	}
	if strings.HasPrefix(ev.Type, "system.") {
		return false
	}
	// Images are host-wide and shared; their events carry stage names and
	// times only (catalog.Build).
	if strings.HasPrefix(ev.Type, "image.") {
		return true
	}
	var owner struct {
		OwnerID string `json:"ownerId"`
	}
	_ = json.Unmarshal(ev.Data, &owner)
	return owner.OwnerID == userID
}

func writeEvent(w io.Writer, ev store.Event) error {
	data := ev.Data
	if len(data) == 0 {
		data = json.RawMessage("{}")
	}
	_, err := fmt.Fprintf(w, "id: %d\nevent: %s\ndata: %s\n\n", ev.ID, ev.Type, data)
	return err
}
