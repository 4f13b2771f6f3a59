package sshproxy

import (
	"bytes"
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

func median(d []time.Duration) time.Duration {
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	return d[len(d)/2]
}

func mbps(d time.Duration) float64 { return float64(benchBytes) / (1 << 20) / d.Seconds() }

// BenchmarkSSHTransfer compares the transfer rate of 64 MiB into
// `cat > /dev/null` through the proxy with the agent's SSH server reached
// directly over the agent transport (x-direct = proxy rate / direct rate;
// target >= 0.9). Runs alternate so both see the same machine load.
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

	const rounds = 5
	var p, d []time.Duration
	upload(b, viaProxy, chunk) // warm up both paths
	upload(b, direct, chunk)
	b.ResetTimer()
	for it := 0; it < b.N; it++ {
		for i := 0; i < rounds; i++ {
			p = append(p, upload(b, viaProxy, chunk))
			d = append(d, upload(b, direct, chunk))
		}
	}
	b.StopTimer()
	pm, dm := median(p), median(d)
	b.ReportMetric(mbps(pm), "proxy-MiB/s")
	b.ReportMetric(mbps(dm), "direct-MiB/s")
	b.ReportMetric(float64(dm)/float64(pm), "x-direct")
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
