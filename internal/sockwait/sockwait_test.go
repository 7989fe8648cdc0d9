//go:build linux

package sockwait

import (
	"errors"
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// connecting starts a non-blocking connect to addr, as an interrupted one is left.
func connecting(t *testing.T, addr *net.TCPAddr) int {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	sa := &unix.SockaddrInet4{Port: addr.Port}
	copy(sa.Addr[:], addr.IP.To4())
	if err := unix.Connect(fd, sa); err != nil && !errors.Is(err, unix.EINPROGRESS) {
		t.Fatalf("connect %s: %v", addr, err)
	}
	return fd
}

func TestConnected(t *testing.T) {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().(*net.TCPAddr)
	if err := Connected(connecting(t, addr), 5*time.Second); err != nil {
		t.Errorf("to a listener: %v, want connected", err)
	}
	l.Close()
	if err := Connected(connecting(t, addr), 5*time.Second); !errors.Is(err, unix.ECONNREFUSED) {
		t.Errorf("to a closed port: %v, want ECONNREFUSED", err)
	}
	if err := Connected(connecting(t, addr), 0); !errors.Is(err, unix.EINPROGRESS) {
		t.Errorf("no time left: %v, want EINPROGRESS", err)
	}
}
