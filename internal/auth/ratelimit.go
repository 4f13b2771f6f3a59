package auth

import (
	"container/list"
	"math"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// limiter holds one token bucket per client address, in an LRU of at most
// max entries, so a flood of addresses costs bounded memory: the least
// recently seen address is forgotten first (it gets a full bucket if it
// comes back, which is what an idle address would have anyway).
type limiter struct {
	every time.Duration
	burst int
	max   int

	mu  sync.Mutex
	m   map[string]*list.Element
	lru *list.List // front: most recently seen; values are *bucket
}

type bucket struct {
	key string
	lim *rate.Limiter
}

func newLimiter(every time.Duration, burst, max int) *limiter {
	return &limiter{every: every, burst: burst, max: max, m: map[string]*list.Element{}, lru: list.New()}
}

// allow takes one token for key at now; when none is left it reports how
// long until one is.
func (l *limiter) allow(key string, now time.Time) (bool, time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var b *bucket
	if e, ok := l.m[key]; ok {
		l.lru.MoveToFront(e)
		b = e.Value.(*bucket)
	} else {
		if l.lru.Len() >= l.max {
			old := l.lru.Back()
			l.lru.Remove(old)
			delete(l.m, old.Value.(*bucket).key)
		}
		b = &bucket{key: key, lim: rate.NewLimiter(rate.Every(l.every), l.burst)}
		l.m[key] = l.lru.PushFront(b)
	}
	r := b.lim.ReserveN(now, 1)
	if !r.OK() {
		return false, l.every
	}
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return false, d
	}
	return true, 0
}

func (l *limiter) size() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lru.Len()
}

// clientKey is the bucket of a request: its peer address, an IPv6 address
// by its /64 (one host usually holds the whole prefix). The edge serves the
// dashboard in-process, so RemoteAddr is the browser's own connection.
func clientKey(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return host
	}
	a = a.Unmap()
	if a.Is6() {
		p, _ := a.Prefix(64)
		return p.String()
	}
	return a.String()
}

// LimitLogin rate-limits a login endpoint per client address: past the
// burst, 429 with Retry-After. The three login endpoints share the buckets.
func (s *Service) LimitLogin(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ok, wait := s.limiter.allow(clientKey(r), s.now())
		if !ok {
			secs := int(math.Ceil(wait.Seconds()))
			w.Header().Set("Retry-After", strconv.Itoa(max(secs, 1)))
			s.log.Warn("login rate limit", "client", clientKey(r), "path", r.URL.Path)
			writeProblem(w, http.StatusTooManyRequests, "rate_limited", "too many login requests from this address; try again in "+strconv.Itoa(max(secs, 1))+" s")
			return
		}
		h.ServeHTTP(w, r)
	})
}
