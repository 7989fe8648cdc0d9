package main

import (
	"os"

	"github.com/shuntmesh/shunt/cni"
)

// runAsCNIPlugin runs the CNI plugin when a runtime executes the binary (as shunt-cni) with
// CNI_COMMAND set, and reports whether it did.
func runAsCNIPlugin() bool {
	if os.Getenv("CNI_COMMAND") == "" {
		return false
	}
	cni.Main()
	return true
}
