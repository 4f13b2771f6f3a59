package store

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	"atelier/internal/testenv"
)

// envBackend selects the backend openTest uses; TestMain sets it for the
// second run of the suite.
const envBackend = "ATELIER_TEST_STORE_BACKEND"

func onPostgres() bool { return os.Getenv(envBackend) == "postgres" }

// TestMain runs the whole suite on SQLite, then runs this test binary again
// with envBackend=postgres so every test using openTest runs on a real
// PostgreSQL too (one server for that run, a fresh database per test).
func TestMain(m *testing.M) {
	code := m.Run()
	testenv.StopPostgres()
	if onPostgres() || code != 0 {
		os.Exit(code)
	}
	if why := testenv.PostgresUnavailable(); why != "" {
		if testenv.Strict() {
			fmt.Fprintf(os.Stderr, "FAIL: the Postgres run of the store tests needs PostgreSQL (apt-get install postgresql): %s (%s is set)\n", why, testenv.EnvStrict)
			os.Exit(1)
		}
		fmt.Fprintf(os.Stderr, "SKIP: the Postgres run of the store tests: %s (Debian: apt-get install postgresql)\n", why)
		os.Exit(code)
	}
	var args []string
	for _, a := range os.Args[1:] {
		// Files the go command reads back belong to the first run only.
		if strings.HasPrefix(a, "-test.testlogfile") || strings.Contains(a, "profile") {
			continue
		}
		args = append(args, a)
	}
	fmt.Println("=== the store suite again, on PostgreSQL")
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), envBackend+"=postgres")
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintf(os.Stderr, "FAIL: the store suite on PostgreSQL: %v\n", err)
		os.Exit(1)
	}
	os.Exit(0)
}
