package hoststats

import (
	"os"
	"path/filepath"
	"testing"
)

func TestReadFromFakeProc(t *testing.T) {
	root := t.TempDir()
	write := func(name, body string) {
		if err := os.WriteFile(filepath.Join(root, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("stat", "cpu  100 0 100 800 0 0 0 0 0 0\ncpu0 50 0 50 400 0 0 0 0 0 0\ncpu1 50 0 50 400 0 0 0 0 0 0\n")
	write("meminfo", "MemTotal:       1000 kB\nMemFree:         100 kB\nMemAvailable:    250 kB\n")
	write("loadavg", "0.50 0.40 0.30 1/100 1234\n")
	write("uptime", "123.45 200.00\n")
	s := &Sampler{ProcRoot: root}
	st, err := s.Read(root)
	if err != nil {
		t.Fatal(err)
	}
	if st.CPUCount != 2 || st.MemoryTotal != 1000*1024 || st.MemoryUsed != 750*1024 || st.MemoryPct != 75 {
		t.Fatalf("unexpected stats: %+v", st)
	}
	if st.Load1 != 0.5 || st.UptimeSecond != 123.45 || st.DiskTotal == 0 {
		t.Fatalf("unexpected stats: %+v", st)
	}
	// Second reading: 100 more busy jiffies and 100 idle -> 50 %.
	write("stat", "cpu  150 0 150 900 0 0 0 0 0 0\ncpu0 1 0 0 0 0 0 0 0 0 0\ncpu1 1 0 0 0 0 0 0 0 0 0\n")
	st, err = s.Read(root)
	if err != nil {
		t.Fatal(err)
	}
	if st.CPUPercent != 50 {
		t.Fatalf("cpu percent = %v, want 50", st.CPUPercent)
	}
}

func TestReadErrors(t *testing.T) {
	s := &Sampler{ProcRoot: t.TempDir()}
	if _, err := s.Read("/"); err == nil {
		t.Fatal("expected an error when /proc files are missing")
	}
}

func TestReadRealHost(t *testing.T) {
	var s Sampler
	st, err := s.Read("/")
	if err != nil {
		t.Fatal(err)
	}
	if st.CPUCount < 1 || st.MemoryTotal == 0 || st.DiskTotal == 0 {
		t.Fatalf("implausible host stats: %+v", st)
	}
}
