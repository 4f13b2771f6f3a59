// Command atelier-agent is the guest agent: `serve` runs the API inside a
// sandbox, `init` is the tiny PID 1 of VM guests. Build it static
// (CGO_ENABLED=0) so it runs in any image.
package main

import (
	"os"

	"atelier/internal/guest"
)

func main() {
	// netcheck runs as a probe Pod's PID 1, which guest.Main would take
	// for a VM guest's init: it is answered first.
	if len(os.Args) > 1 && os.Args[1] == "netcheck" {
		os.Exit(netcheckMain(os.Args[2:]))
	}
	os.Exit(guest.Main(os.Args[1:]))
}
