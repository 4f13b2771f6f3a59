// Command pause is the Kubernetes test bed's pod sandbox ("pause") process: it holds the pod's
// namespaces, reaps orphans as PID 1 would and exits on SIGINT or SIGTERM. It is built
// statically (CGO_ENABLED=0) and packed into a local OCI image, so no registry is involved.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for s := range sigs {
		if s != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			var ws syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
