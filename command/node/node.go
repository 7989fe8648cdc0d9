// Package node holds the node's commands: the CNI plugin's installer and agent (install-cni) and the
// eBPF data path (ebpf load, run, status, unload, join, leave). They link client-go, Prometheus and
// cilium/ebpf, which the init container's binary does without.
package node

import (
	"github.com/spf13/cobra"

	"github.com/shuntmesh/shunt/command/capture"
)

// Commands are the node's commands.
func Commands(env capture.Env) []*cobra.Command {
	return []*cobra.Command{newInstallCNICmd(env), newEBPFCmd(env), newDoctorCmd(env), newMigratePodsCmd(env), newStatusCmd(env)}
}
