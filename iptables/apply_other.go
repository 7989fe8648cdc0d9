//go:build !linux

package iptables

import (
	"context"
	"errors"

	"github.com/shuntmesh/shunt/redirect"
)

// ErrNotSupported is returned off Linux, where there is nothing to program; dry runs still work.
var ErrNotSupported = errors.New("not supported on this operating system")

// Apply is not supported off Linux.
func Apply(context.Context, *redirect.Plan, Options) error { return ErrNotSupported }

// Check is not supported off Linux.
func Check(context.Context, *redirect.Plan, Options) error { return ErrNotSupported }

// Cleanup is not supported off Linux.
func Cleanup(context.Context, Options) error { return ErrNotSupported }

// Find is not supported off Linux.
func Find(context.Context, Options) ([]Installed, error) { return nil, ErrNotSupported }

// Remove is not supported off Linux.
func Remove(context.Context, Options) ([]Installed, error) { return nil, ErrNotSupported }

// ChooseVariant is not supported off Linux.
func ChooseVariant(string) (Variant, string, error) { return "", "", ErrNotSupported }

// KernelHasNFT is false off Linux.
func KernelHasNFT() bool { return false }
