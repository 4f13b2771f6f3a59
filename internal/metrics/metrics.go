// Package metrics holds the manager's Prometheus instruments on a private
// registry, so tests can build as many as they like and nothing leaks into
// the global default registry.
package metrics

import (
	"context"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Sandbox operation results, the values of the "result" label.
const (
	ResultOK       = "ok"
	ResultError    = "error"
	ResultConflict = "conflict"
	ResultLimit    = "limit"
	ResultNotFound = "not_found"
)

// StatusCounter returns the number of sandboxes per status; it is called at
// scrape time so the gauge can never drift from the store.
type StatusCounter func(ctx context.Context) (map[string]int, error)

// Metrics is the set of instruments the manager records.
type Metrics struct {
	Registry *prometheus.Registry

	// SandboxOps counts lifecycle operations by op (create, start, stop,
	// restart, destroy) and result (ok, error, conflict, limit, not_found).
	SandboxOps *prometheus.CounterVec
	// ReconcilerFixes counts what the reconciler repaired, by kind.
	ReconcilerFixes *prometheus.CounterVec
	// CreatePhase observes the duration of each create/start phase
	// (queue, lease, volume, link, boot, hooks, total).
	CreatePhase *prometheus.HistogramVec
	// SpawnQueue is the number of create jobs waiting for a spawn worker.
	SpawnQueue prometheus.Gauge
	// HTTPRequests and HTTPDuration are recorded by the API middleware.
	HTTPRequests *prometheus.CounterVec
	HTTPDuration *prometheus.HistogramVec

	statuses *statusCollector
}

// New builds the instruments and registers them with Go and process collectors.
func New() *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		SandboxOps: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "atelier_sandbox_operations_total",
			Help: "Sandbox lifecycle operations by operation and result.",
		}, []string{"op", "result"}),
		ReconcilerFixes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "atelier_reconciler_fixes_total",
			Help: "Leaks removed and sandbox states corrected by the reconciler, by kind.",
		}, []string{"kind"}),
		CreatePhase: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "atelier_sandbox_create_phase_seconds",
			Help: "Duration of each phase of sandbox create and start.",
			// Phases range from sub-millisecond map updates to multi-second boots.
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"phase"}),
		SpawnQueue: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "atelier_spawn_queue_depth",
			Help: "Create jobs waiting for a spawn worker.",
		}),
		HTTPRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "atelier_http_requests_total",
			Help: "HTTP requests by route pattern, method and status code.",
		}, []string{"route", "method", "code"}),
		HTTPDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "atelier_http_request_duration_seconds",
			Help:    "HTTP request duration by route pattern, method and status code.",
			Buckets: prometheus.DefBuckets,
		}, []string{"route", "method", "code"}),
		statuses: &statusCollector{desc: prometheus.NewDesc(
			"atelier_sandboxes", "Sandboxes by status.", []string{"status"}, nil)},
	}
	m.Registry.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.SandboxOps, m.ReconcilerFixes, m.CreatePhase, m.SpawnQueue, m.HTTPRequests, m.HTTPDuration, m.statuses,
	)
	return m
}

// Handler serves the registry in the Prometheus exposition format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{
		// A failing status count must not hide every other metric.
		ErrorHandling: promhttp.ContinueOnError,
		Registry:      m.Registry,
	})
}

// ObserveHTTP records one served request.
func (m *Metrics) ObserveHTTP(route, method, code string, d time.Duration) {
	m.HTTPRequests.WithLabelValues(route, method, code).Inc()
	m.HTTPDuration.WithLabelValues(route, method, code).Observe(d.Seconds())
}

// ObserveOp counts one sandbox operation.
func (m *Metrics) ObserveOp(op, result string) {
	m.SandboxOps.WithLabelValues(op, result).Inc()
}

// ObservePhase records the duration of one create or start phase.
func (m *Metrics) ObservePhase(phase string, d time.Duration) {
	m.CreatePhase.WithLabelValues(phase).Observe(d.Seconds())
}

// SetStatusCounter installs the source of the atelier_sandboxes gauge.
func (m *Metrics) SetStatusCounter(f StatusCounter) {
	m.statuses.mu.Lock()
	m.statuses.count = f
	m.statuses.mu.Unlock()
}

// statusCollector asks the store at scrape time instead of tracking
// transitions, so crashes and out-of-band edits cannot skew the numbers.
type statusCollector struct {
	desc  *prometheus.Desc
	mu    sync.Mutex
	count StatusCounter
}

func (c *statusCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *statusCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	count := c.count
	c.mu.Unlock()
	if count == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	counts, err := count(ctx)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(c.desc, err)
		return
	}
	for status, n := range counts {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(n), status)
	}
}
