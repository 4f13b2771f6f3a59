// Package testenv decides what a test does when a prerequisite is missing:
// skip with a message on a developer's machine, fail under CI, which
// installs every prerequisite and sets ATELIER_TEST_STRICT so that no test
// can pass by skipping.
package testenv

import (
	"fmt"
	"os"
	"testing"
)

// EnvStrict is set by .ci/run.
const EnvStrict = "ATELIER_TEST_STRICT"

// Strict reports whether missing prerequisites are failures.
func Strict() bool { return os.Getenv(EnvStrict) != "" }

// Missing skips the test with msg, or fails it under EnvStrict.
func Missing(tb testing.TB, format string, a ...any) {
	tb.Helper()
	msg := fmt.Sprintf(format, a...)
	if Strict() {
		tb.Fatalf("%s (%s is set: CI must run this test)", msg, EnvStrict)
	}
	tb.Skip(msg)
}
