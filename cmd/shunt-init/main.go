// Command shunt-init is the init container's binary: shunt's capture commands — `iptables` (with
// Istio's name for it, `istio-iptables`, which the sidecar injector passes as the first argument),
// `cleanup` and `validate` — and nothing of the node's. It links neither client-go, Prometheus nor
// cilium/ebpf, whose package initialisation every pod start would otherwise pay for.
package main

import (
	"context"
	"os"

	"github.com/shuntmesh/shunt/command/capture"
)

func main() {
	env := capture.Env{Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr}
	root := capture.NewRoot("shunt-init", "Program a meshed pod's traffic capture (the init container of shunt)")
	root.AddCommand(capture.Commands(env)...)
	capture.Exit("shunt-init", capture.Execute(context.Background(), root, os.Args[1:], env))
}
