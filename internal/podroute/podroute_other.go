//go:build !linux

package podroute

import (
	"errors"

	"github.com/shuntmesh/shunt/redirect"
)

// Proto marks the routes, ip rules and addresses shunt adds; see the Linux implementation.
const Proto = 0x53

var errNotLinux = errors.New("routes are only set up on Linux")

// Sync is only implemented on Linux.
func Sync(*redirect.Plan) error { return errNotLinux }

// Cleanup is only implemented on Linux.
func Cleanup() ([]string, error) { return nil, errNotLinux }

// CleanupAt is only implemented on Linux.
func CleanupAt(string) ([]string, error) { return nil, errNotLinux }

// DetectIPv6 is only implemented on Linux; elsewhere a namespace is IPv4.
func DetectIPv6(string, bool) (bool, error) { return false, nil }
