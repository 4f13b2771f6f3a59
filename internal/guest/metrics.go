package guest

import (
	"bufio"
	"bytes"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"atelier/internal/agent"
)

// cpuFirstSample is the window measured when /metrics has no previous
// sample to compare with.
const cpuFirstSample = 100 * time.Millisecond

// cpuSampler turns /proc/stat counters into a busy percentage between
// two calls.
type cpuSampler struct {
	mu          sync.Mutex
	idle, total uint64
	have        bool
}

func readCPU() (idle, total uint64, err error) {
	f, err := os.Open("/proc/stat")
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	line, err := bufio.NewReader(f).ReadString('\n')
	if err != nil {
		return 0, 0, err
	}
	fields := strings.Fields(line)
	if len(fields) < 5 || fields[0] != "cpu" {
		return 0, 0, fmt.Errorf("unexpected /proc/stat line %q", line)
	}
	// user nice system idle iowait irq softirq steal; guest time is
	// already part of user.
	for i, f := range fields[1:min(len(fields), 9)] {
		n, err := strconv.ParseUint(f, 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("parse /proc/stat: %w", err)
		}
		total += n
		if i == 3 || i == 4 {
			idle += n
		}
	}
	return idle, total, nil
}

func (c *cpuSampler) percent() (float64, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.have {
		idle, total, err := readCPU()
		if err != nil {
			return 0, err
		}
		c.idle, c.total, c.have = idle, total, true
		time.Sleep(cpuFirstSample)
	}
	idle, total, err := readCPU()
	if err != nil {
		return 0, err
	}
	di, dt := idle-c.idle, total-c.total
	c.idle, c.total = idle, total
	if dt == 0 || idle < c.idle {
		return 0, nil
	}
	return float64(dt-di) * 100 / float64(dt), nil
}

func meminfo() (agent.Usage, error) {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return agent.Usage{}, err
	}
	vals := map[string]uint64{}
	for _, line := range bytes.Split(b, []byte{'\n'}) {
		k, v, ok := bytes.Cut(line, []byte{':'})
		if !ok {
			continue
		}
		f := strings.Fields(string(v))
		if len(f) == 0 {
			continue
		}
		n, err := strconv.ParseUint(f[0], 10, 64)
		if err == nil {
			vals[string(k)] = n * 1024
		}
	}
	total, avail := vals["MemTotal"], vals["MemAvailable"]
	if avail == 0 {
		avail = vals["MemFree"] + vals["Buffers"] + vals["Cached"]
	}
	return agent.Usage{Total: total, Used: total - min(avail, total), Free: avail}, nil
}

func diskUsage(path string) (agent.Usage, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return agent.Usage{}, err
	}
	bs := uint64(st.Bsize)
	return agent.Usage{Total: st.Blocks * bs, Used: (st.Blocks - st.Bfree) * bs, Free: st.Bavail * bs}, nil
}

func processCount() int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return 0
	}
	n := 0
	for _, e := range ents {
		if name := e.Name(); name[0] >= '0' && name[0] <= '9' {
			n++
		}
	}
	return n
}

func load1() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}

func (s *Server) metrics(w http.ResponseWriter, r *http.Request) error {
	cpu, err := s.cpu.percent()
	if err != nil {
		return fmt.Errorf("read cpu counters: %w", err)
	}
	mem, err := meminfo()
	if err != nil {
		return fmt.Errorf("read meminfo: %w", err)
	}
	disk, err := diskUsage("/")
	if err != nil {
		return fmt.Errorf("statfs /: %w", err)
	}
	return writeJSON(w, http.StatusOK, agent.Metrics{
		CPUPercent: cpu,
		Load1:      load1(),
		Memory:     mem,
		Disk:       disk,
		Processes:  processCount(),
		Timestamp:  time.Now().UTC(),
	})
}
