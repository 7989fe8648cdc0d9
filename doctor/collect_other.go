//go:build !linux

package doctor

import "context"

// Collect returns ErrNotSupported off Linux.
func Collect(context.Context, Options) (*Report, error) { return nil, ErrNotSupported }
