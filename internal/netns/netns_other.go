//go:build !linux

package netns

// Do runs fn when path is empty (the current namespace); any other path needs Linux.
func Do(path string, fn func() error) error {
	if path == "" {
		return fn()
	}
	return ErrNotSupported
}
