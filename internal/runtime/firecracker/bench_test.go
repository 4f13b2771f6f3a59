package firecracker

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"atelier/internal/bootcontract"
)

// BenchmarkQEMUBootToAgent boots the real guest (kernel, test image, the
// driver's command line) under QEMU's TCG emulation and reports the time
// from QEMU's start to the agent's first answer, and, from the guest's own
// boot marks, PID 1's start to the agent listening. Emulation runs the
// guest many times slower than KVM: these are absolute figures for
// following a trend, not Firecracker's (BenchmarkInitToListening in
// internal/guest measures the init natively).
func BenchmarkQEMUBootToAgent(b *testing.B) {
	h := newQEMUHost(b)
	var ready, initToListen []time.Duration
	// Three boots per iteration (`make bench` runs one): their median.
	for b.Loop() {
		for range 3 {
			g := bootQEMU(b, h, false)
			ready = append(ready, g.ready)
			start, _ := strconv.ParseInt(strings.TrimSpace(g.run(b, "cat", bootcontract.RunDir+"/"+bootcontract.InitStartFile)), 10, 64)
			listen, _ := strconv.ParseInt(strings.TrimSpace(g.run(b, "cat", bootcontract.RunDir+"/"+bootcontract.AgentListeningFile)), 10, 64)
			initToListen = append(initToListen, time.Duration(listen-start))
			g.vm.Kill()
		}
	}
	b.ReportMetric(ms(median(ready)), "boot-to-agent-ms")
	b.ReportMetric(ms(median(initToListen)), "init-to-listen-tcg-ms")
}

func median(d []time.Duration) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), d...)
	for i := range s {
		for j := i + 1; j < len(s); j++ {
			if s[j] < s[i] {
				s[i], s[j] = s[j], s[i]
			}
		}
	}
	return s[len(s)/2]
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
