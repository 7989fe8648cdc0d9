// Command shunt sets up transparent traffic interception for service-mesh sidecars: the capture
// commands (`shunt iptables`, a drop-in for Istio's istio-iptables, cleanup, validate), the CNI plugin
// and its node installer, and the eBPF data path. The init container has a leaner binary of its own,
// cmd/shunt-init.
package main

import (
	"context"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/shuntmesh/shunt/cni/meshpod"
	"github.com/shuntmesh/shunt/command/capture"
	"github.com/shuntmesh/shunt/command/node"
)

func main() {
	// No signal handler here: it costs an OS thread at every start, and an init container's run is
	// over in a millisecond. Commands that wait (validation) install one.
	if runAsCNIPlugin() {
		return
	}
	capture.Exit("shunt", run(context.Background(), os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// run executes the command line args.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	env := capture.Env{Stdin: stdin, Stdout: stdout, Stderr: stderr}
	return capture.Execute(ctx, newRootCmd(env), args, env)
}

// newRootCmd returns the command tree: the capture commands, with --pod, and the node's.
func newRootCmd(env capture.Env) *cobra.Command {
	env.PodConfig = meshpod.ManifestConfig
	root := capture.NewRoot("shunt", "Transparent traffic interception for service-mesh sidecars")
	root.AddCommand(capture.Commands(env)...)
	root.AddCommand(capture.NewMigrateCmd(env))
	root.AddCommand(node.Commands(env)...)
	return root
}
