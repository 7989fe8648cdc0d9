// Package netns runs code inside a network namespace named by its path.
package netns

import "errors"

// ErrNotSupported is returned where network namespaces do not exist.
var ErrNotSupported = errors.New("not supported")
