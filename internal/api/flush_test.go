package api_test

import (
	"bufio"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"atelier/internal/config"
)

// unwrapOnly is a ResponseWriter like Caddy's wrapper: it unwraps to the
// connection's writer but is no http.Flusher itself.
type unwrapOnly struct{ w http.ResponseWriter }

func (u unwrapOnly) Header() http.Header         { return u.w.Header() }
func (u unwrapOnly) Write(b []byte) (int, error) { return u.w.Write(b) }
func (u unwrapOnly) WriteHeader(code int)        { u.w.WriteHeader(code) }
func (u unwrapOnly) Unwrap() http.ResponseWriter { return u.w }

// TestEventsFlushBehindWrappers: the event stream's first bytes reach the
// client at once when the API is served behind a writer that only unwraps
// (the edge serving the dashboard host), so a browser's EventSource opens.
func TestEventsFlushBehindWrappers(t *testing.T) {
	h := newHarness(t, config.ModeMock, nil)
	api := h.srv.API.Handler()
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		api.ServeHTTP(unwrapOnly{w}, r)
	}))
	defer ts.Close()
	defer ts.CloseClientConnections()
	// Without the flush nothing, not even the status line, leaves the server.
	c := &http.Client{Timeout: 3 * time.Second}
	res, err := c.Get(ts.URL + "/api/events")
	if err != nil {
		t.Fatalf("the event stream did not start: flushes are lost behind the wrapper: %v", err)
	}
	defer res.Body.Close()
	first, err := bufio.NewReader(res.Body).ReadString('\n')
	if err != nil || !strings.HasPrefix(first, "retry:") {
		t.Fatalf("first line %q, %v", first, err)
	}
}
