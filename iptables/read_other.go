//go:build !linux

package iptables

import "github.com/shuntmesh/shunt/redirect"

// readKernel is not supported off Linux.
func readKernel(Variant, redirect.Family) (*kernelTables, error) { return nil, ErrNotSupported }
