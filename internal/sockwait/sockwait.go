//go:build linux

// Package sockwait finishes a blocking connect(2) that a signal interrupted. A connect on a socket
// with SO_SNDTIMEO is not restarted after a signal handler ran (signal(7)): it fails with EINTR
// while the connection goes on. The test programs, which make blocking calls on raw sockets, wait
// for its outcome with Connected.
package sockwait

import (
	"errors"
	"time"

	"golang.org/x/sys/unix"
)

// Connected waits up to left for the outcome of the connect in progress on fd: nil when it
// connected, the connection's error, or EINPROGRESS when it is still in progress, which is what a
// connect whose SO_SNDTIMEO ran out returns.
func Connected(fd int, left time.Duration) error {
	deadline := time.Now().Add(left)
	for {
		ms := int(time.Until(deadline).Milliseconds())
		if ms <= 0 {
			return unix.EINPROGRESS
		}
		n, err := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}, ms)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return err
		}
		if n == 0 {
			return unix.EINPROGRESS
		}
		soErr, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
		if err != nil {
			return err
		}
		if soErr != 0 {
			return unix.Errno(soErr)
		}
		return nil
	}
}
