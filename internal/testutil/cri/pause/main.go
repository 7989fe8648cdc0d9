// Command pause is the sandbox image of the CRI tests' containerd: the process that holds a pod
// sandbox's namespaces. It waits for SIGTERM or SIGINT and exits 0, as Kubernetes' pause does.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
}
