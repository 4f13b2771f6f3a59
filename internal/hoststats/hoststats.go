// Package hoststats reads the host's CPU, memory and disk usage from /proc
// and statfs, without shelling out to top, free or df.
package hoststats

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Stats is one reading.
type Stats struct {
	CPUPercent   float64 `json:"cpuPercent"`
	CPUCount     int     `json:"cpuCount"`
	Load1        float64 `json:"load1"`
	MemoryTotal  uint64  `json:"memoryTotalBytes"`
	MemoryUsed   uint64  `json:"memoryUsedBytes"`
	MemoryPct    float64 `json:"memoryPercent"`
	DiskPath     string  `json:"diskPath"`
	DiskTotal    uint64  `json:"diskTotalBytes"`
	DiskUsed     uint64  `json:"diskUsedBytes"`
	DiskPct      float64 `json:"diskPercent"`
	UptimeSecond float64 `json:"hostUptimeSeconds"`
}

// Sampler computes CPU usage between successive calls; the first call
// measures over a short window so it never reports a meaningless zero.
type Sampler struct {
	ProcRoot string // "/proc" unless a test points elsewhere
	mu       sync.Mutex
	idle     uint64
	total    uint64
}

func (s *Sampler) proc(name string) string {
	root := s.ProcRoot
	if root == "" {
		root = "/proc"
	}
	return root + "/" + name
}

// Read returns the host stats; diskPath is the filesystem to report (the data dir).
func (s *Sampler) Read(diskPath string) (Stats, error) {
	var st Stats
	cpu, n, err := s.cpuPercent()
	if err != nil {
		return st, err
	}
	st.CPUPercent, st.CPUCount = cpu, n
	if st.MemoryTotal, st.MemoryUsed, err = s.memory(); err != nil {
		return st, err
	}
	if st.MemoryTotal > 0 {
		st.MemoryPct = pct(st.MemoryUsed, st.MemoryTotal)
	}
	if b, err := os.ReadFile(s.proc("loadavg")); err == nil {
		if f := strings.Fields(string(b)); len(f) > 0 {
			st.Load1, _ = strconv.ParseFloat(f[0], 64)
		}
	}
	if b, err := os.ReadFile(s.proc("uptime")); err == nil {
		if f := strings.Fields(string(b)); len(f) > 0 {
			st.UptimeSecond, _ = strconv.ParseFloat(f[0], 64)
		}
	}
	var fs syscall.Statfs_t
	if err := syscall.Statfs(diskPath, &fs); err != nil {
		return st, fmt.Errorf("statfs %s: %w", diskPath, err)
	}
	st.DiskPath = diskPath
	st.DiskTotal = fs.Blocks * uint64(fs.Bsize)
	st.DiskUsed = (fs.Blocks - fs.Bfree) * uint64(fs.Bsize)
	if st.DiskTotal > 0 {
		st.DiskPct = pct(st.DiskUsed, st.DiskTotal)
	}
	return st, nil
}

func pct(a, b uint64) float64 { return float64(int(float64(a)/float64(b)*1000)) / 10 }

func (s *Sampler) readCPU() (idle, total uint64, n int, err error) {
	b, err := os.ReadFile(s.proc("stat"))
	if err != nil {
		return 0, 0, 0, fmt.Errorf("read cpu stats: %w", err)
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "cpu "):
			f := strings.Fields(line)[1:]
			for i, v := range f {
				x, _ := strconv.ParseUint(v, 10, 64)
				total += x
				if i == 3 || i == 4 { // idle, iowait
					idle += x
				}
			}
		case strings.HasPrefix(line, "cpu"):
			n++
		}
	}
	if total == 0 {
		return 0, 0, 0, fmt.Errorf("read cpu stats: no aggregate cpu line")
	}
	return idle, total, n, nil
}

func (s *Sampler) cpuPercent() (float64, int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	idle, total, n, err := s.readCPU()
	if err != nil {
		return 0, 0, err
	}
	if s.total == 0 {
		s.idle, s.total = idle, total
		time.Sleep(100 * time.Millisecond)
		if idle, total, n, err = s.readCPU(); err != nil {
			return 0, 0, err
		}
	}
	dIdle, dTotal := idle-s.idle, total-s.total
	s.idle, s.total = idle, total
	if dTotal == 0 {
		return 0, n, nil
	}
	return float64(int((1-float64(dIdle)/float64(dTotal))*1000)) / 10, n, nil
}

func (s *Sampler) memory() (total, used uint64, err error) {
	b, err := os.ReadFile(s.proc("meminfo"))
	if err != nil {
		return 0, 0, fmt.Errorf("read meminfo: %w", err)
	}
	vals := map[string]uint64{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) >= 2 {
			v, _ := strconv.ParseUint(f[1], 10, 64)
			vals[strings.TrimSuffix(f[0], ":")] = v * 1024
		}
	}
	total = vals["MemTotal"]
	if total == 0 {
		return 0, 0, fmt.Errorf("read meminfo: no MemTotal")
	}
	return total, total - vals["MemAvailable"], nil
}
