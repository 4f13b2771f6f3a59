package sshproxy

import (
	"bytes"
	"fmt"
	"io"
	"sort"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"atelier/internal/auth"
)

const benchBytes = 64 << 20

// upload copies benchBytes into `cat > /dev/null` on a new session and
// returns the elapsed time until the exit status arrived.
func upload(b *testing.B, cl *ssh.Client, chunk []byte) time.Duration {
	b.Helper()
	s, err := cl.NewSession()
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	in, err := s.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := s.Start("cat > /dev/null"); err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	for n := 0; n < benchBytes; n += len(chunk) {
		if _, err := in.Write(chunk); err != nil {
			b.Fatal(err)
		}
	}
	in.Close()
	if err := s.Wait(); err != nil {
		b.Fatal(err)
	}
	return time.Since(start)
}

// download reads benchBytes of `head -c` output and returns the elapsed
// time until the exit status arrived.
func download(b *testing.B, cl *ssh.Client) time.Duration {
	b.Helper()
	s, err := cl.NewSession()
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	out, err := s.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	if err := s.Start(fmt.Sprintf("head -c %d /dev/zero", benchBytes)); err != nil {
		b.Fatal(err)
	}
	n, err := io.Copy(io.Discard, out)
	if err != nil || n != benchBytes {
		b.Fatalf("download: %d bytes, %v", n, err)
	}
	if err := s.Wait(); err != nil {
		b.Fatal(err)
	}
	return time.Since(start)
}

func median(d []time.Duration) time.Duration {
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	return d[len(d)/2]
}

func mbps(d time.Duration) float64 { return float64(benchBytes) / (1 << 20) / d.Seconds() }

// BenchmarkSSHTransfer compares the transfer rate of 64 MiB into
// `cat > /dev/null` (up) and out of `head -c` (down) through the proxy with
// the agent's SSH server reached directly over the agent transport
// (x-direct = proxy rate / direct rate; target >= 0.9). Runs alternate so
// both see the same machine load, and each ratio is the median of the
// ratios of its rounds.
func BenchmarkSSHTransfer(b *testing.B) {
	e := newEnv(b, nil)
	local := e.user(b, auth.LocalUserID, 0)
	id := e.sandbox(b, local.ID)
	signer, _ := e.key(b, local.ID, nil)
	viaProxy, err := e.dial(id, signer, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer viaProxy.Close()
	direct := e.dialDirect(b, id)
	defer direct.Close()
	chunk := bytes.Repeat([]byte("atelier!"), 4096)

	const rounds = 9
	var pu, du, pd, dd []time.Duration
	var ru, rd []float64
	upload(b, viaProxy, chunk) // warm up both paths
	upload(b, direct, chunk)
	b.ResetTimer()
	for it := 0; it < b.N; it++ {
		for i := 0; i < rounds; i++ {
			p, d := upload(b, viaProxy, chunk), upload(b, direct, chunk)
			pu, du, ru = append(pu, p), append(du, d), append(ru, float64(d)/float64(p))
			p, d = download(b, viaProxy), download(b, direct)
			pd, dd, rd = append(pd, p), append(dd, d), append(rd, float64(d)/float64(p))
		}
	}
	b.StopTimer()
	b.ReportMetric(mbps(median(pu)), "up-proxy-MiB/s")
	b.ReportMetric(mbps(median(du)), "up-direct-MiB/s")
	b.ReportMetric(medianF(ru), "up-x-direct")
	b.ReportMetric(mbps(median(pd)), "down-proxy-MiB/s")
	b.ReportMetric(mbps(median(dd)), "down-direct-MiB/s")
	b.ReportMetric(medianF(rd), "down-x-direct")
}

func medianF(x []float64) float64 {
	sort.Float64s(x)
	return x[len(x)/2]
}

// BenchmarkSSHLogin measures connect + authenticate + `true` + disconnect
// through the proxy and directly to the agent's SSH server; extra-ms is
// the proxy's added login latency (p50; target <= 30 ms).
func BenchmarkSSHLogin(b *testing.B) {
	e := newEnv(b, nil)
	local := e.user(b, auth.LocalUserID, 0)
	id := e.sandbox(b, local.ID)
	signer, _ := e.key(b, local.ID, nil)
	once := func(cl *ssh.Client) {
		defer cl.Close()
		s, err := cl.NewSession()
		if err != nil {
			b.Fatal(err)
		}
		defer s.Close()
		if err := s.Run("true"); err != nil {
			b.Fatal(err)
		}
	}
	proxied := func() time.Duration {
		t0 := time.Now()
		cl, err := e.dial(id, signer, nil)
		if err != nil {
			b.Fatal(err)
		}
		once(cl)
		return time.Since(t0)
	}
	directly := func() time.Duration {
		t0 := time.Now()
		once(e.dialDirect(b, id))
		return time.Since(t0)
	}
	proxied()
	directly()
	const rounds = 30
	var p, d []time.Duration
	b.ResetTimer()
	for it := 0; it < b.N; it++ {
		for i := 0; i < rounds; i++ {
			p = append(p, proxied())
			d = append(d, directly())
		}
	}
	b.StopTimer()
	pm, dm := median(p), median(d)
	b.ReportMetric(float64(pm.Microseconds())/1000, "proxy-ms")
	b.ReportMetric(float64(dm.Microseconds())/1000, "direct-ms")
	b.ReportMetric(float64((pm-dm).Microseconds())/1000, "extra-ms")
}
