// Package ids creates and validates the identifiers that cross Atelier's
// boundaries. Everything user-supplied is checked here before it reaches a
// path, a device name or a command line.
package ids

import (
	"crypto/rand"
	"regexp"
)

const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"

// SandboxIDLen is the length of sandbox and workspace ids, as in the reference.
const SandboxIDLen = 12

var (
	sandboxIDRe = regexp.MustCompile(`^[a-z0-9]{12}$`)
	// A DNS label as used in dev-{name}-{id} hosts: lowercase, digits and inner hyphens.
	dnsLabelRe = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
)

// New returns n random characters from [a-z0-9].
func New(n int) string {
	b := make([]byte, n)
	// Rejection sampling keeps the distribution uniform over 36 symbols.
	out := make([]byte, 0, n)
	for len(out) < n {
		if _, err := rand.Read(b); err != nil {
			panic("ids: crypto/rand failed: " + err.Error())
		}
		for _, c := range b {
			if c < 252 && len(out) < n { // 252 = 7*36
				out = append(out, alphabet[int(c)%len(alphabet)])
			}
		}
	}
	return string(out)
}

// NewSandboxID returns a fresh 12-character sandbox id.
func NewSandboxID() string { return New(SandboxIDLen) }

// ValidSandboxID reports whether s is a well-formed sandbox (or workspace) id.
func ValidSandboxID(s string) bool { return sandboxIDRe.MatchString(s) }

// ValidDNSLabel reports whether s is a DNS label usable inside a hostname.
func ValidDNSLabel(s string) bool { return dnsLabelRe.MatchString(s) }
