// Command atelier-agent is the guest agent: `serve` runs the API inside a
// sandbox, `init` is the tiny PID 1 of VM guests. Build it static
// (CGO_ENABLED=0) so it runs in any image.
package main

import (
	"os"

	"atelier/internal/guest"
)

func main() {
	os.Exit(guest.Main(os.Args[1:]))
}
