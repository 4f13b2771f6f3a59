package metrics

import (
	"context"
	"errors"
	"io"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func scrape(t *testing.T, m *Metrics) string {
	t.Helper()
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(rec.Body)
	return string(body)
}

func TestInstrumentsExposed(t *testing.T) {
	m := New()
	m.ObserveHTTP("GET /api/sandboxes", "GET", "200", 3*time.Millisecond)
	m.ObserveOp("create", ResultOK)
	m.ObserveOp("create", ResultOK)
	m.ObservePhase("boot", 40*time.Millisecond)
	m.SpawnQueue.Set(4)
	m.SetStatusCounter(func(context.Context) (map[string]int, error) {
		return map[string]int{"running": 2, "stopped": 0}, nil
	})
	out := scrape(t, m)
	for _, want := range []string{
		`atelier_http_requests_total{code="200",method="GET",route="GET /api/sandboxes"} 1`,
		`atelier_http_request_duration_seconds_count{code="200",method="GET",route="GET /api/sandboxes"} 1`,
		`atelier_sandbox_operations_total{op="create",result="ok"} 2`,
		`atelier_sandbox_create_phase_seconds_count{phase="boot"} 1`,
		`atelier_spawn_queue_depth 4`,
		`atelier_sandboxes{status="running"} 2`,
		`atelier_sandboxes{status="stopped"} 0`,
		`go_goroutines`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("scrape lacks %q", want)
		}
	}
}

func TestStatusCounterErrorKeepsOtherMetrics(t *testing.T) {
	m := New()
	m.ObserveOp("stop", ResultConflict)
	m.SetStatusCounter(func(context.Context) (map[string]int, error) { return nil, errors.New("db closed") })
	out := scrape(t, m)
	if !strings.Contains(out, `atelier_sandbox_operations_total{op="stop",result="conflict"} 1`) {
		t.Errorf("other metrics hidden by a failing status counter:\n%s", out)
	}
	if strings.Contains(out, "atelier_sandboxes{") {
		t.Errorf("status gauge reported despite the error")
	}
}

func TestInstancesIndependent(t *testing.T) {
	a, b := New(), New()
	a.ObserveOp("destroy", ResultOK)
	if strings.Contains(scrape(t, b), `op="destroy"`) {
		t.Fatal("metrics leak between registries")
	}
}
