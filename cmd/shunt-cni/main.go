// Command shunt-cni is the CNI plugin a runtime executes for every pod: a shim that hands the command
// to shunt's node agent and falls back to the standalone plugin (the shunt binary) when the agent
// cannot run it. See package cni/shim.
package main

import "github.com/shuntmesh/shunt/cni/shim"

func main() { shim.Main() }
