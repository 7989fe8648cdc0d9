//go:build !linux

package nftables

import (
	"context"
	"errors"

	"github.com/shuntmesh/shunt/redirect"
)

// ErrNotSupported is returned outside Linux.
var ErrNotSupported = errors.New("nftables: only supported on Linux")

// Apply is only implemented on Linux.
func Apply(context.Context, *redirect.Plan, Options) error { return ErrNotSupported }

// Check is only implemented on Linux.
func Check(context.Context, *redirect.Plan, Options) error { return ErrNotSupported }

// Read is only implemented on Linux.
func Read(Options) (State, error) { return nil, ErrNotSupported }

// Cleanup is only implemented on Linux.
func Cleanup(context.Context, Options) error { return ErrNotSupported }

// Find is only implemented on Linux.
func Find(Options) ([]string, error) { return nil, ErrNotSupported }

// Remove is only implemented on Linux.
func Remove(Options) ([]string, error) { return nil, ErrNotSupported }
