//go:build !linux

package agent

import (
	"context"
	"net/netip"

	shuntebpf "github.com/shuntmesh/shunt/ebpf"
)

// Run needs Linux.
func Run(context.Context, Config) error { return shuntebpf.ErrNotSupported }

// NetNSAddrs needs Linux.
func NetNSAddrs(string) ([]netip.Addr, error) { return nil, shuntebpf.ErrNotSupported }
