//go:build !linux

package iptables

import "github.com/shuntmesh/shunt/redirect"

// readKernel is not supported off Linux.
func readKernel(Variant, redirect.Family, ...string) (*kernelTables, error) {
	return nil, ErrNotSupported
}
