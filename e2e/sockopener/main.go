//go:build linux

// Command sockopener opens a TCP socket as one identity and connects it as
// another, so that the end-to-end tests can tell the iptables owner match,
// which judges a socket by the credentials it was opened with, from the eBPF
// connect hook, which judges the task calling connect(2):
//
//	sockopener -addr IP:PORT -open UID:GID -connect UID:GID
//
// It must start as root. On one locked OS thread it takes the ids of -open
// (real, effective and filesystem; the saved ids stay 0 so it can come back),
// creates the socket, returns to root, takes the ids of -connect and
// connects. Then it reads the server's first line (a pingpong greeting, after
// the tags of the proxies on the way), sends "echo 0" and prints one JSON
// object: the path, and the socket's local address. On failure it prints the
// object with "error" set and exits 1.
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

type result struct {
	Path  string `json:"path"`
	Local string `json:"local"`
	Error string `json:"error,omitempty"`
}

func main() {
	var res result
	err := run(os.Args[1:], &res)
	if err != nil {
		res.Error = err.Error()
	}
	out, _ := json.Marshal(res)
	fmt.Println(string(out))
	if err != nil {
		os.Exit(1)
	}
}

func run(args []string, res *result) error {
	fs := flag.NewFlagSet("sockopener", flag.ContinueOnError)
	addr := fs.String("addr", "", "IP:PORT to connect to")
	open := fs.String("open", "", "UID:GID the socket is created as")
	conn := fs.String("connect", "", "UID:GID connect(2) is called as")
	if err := fs.Parse(args); err != nil {
		return err
	}
	to, err := netip.ParseAddrPort(*addr)
	if err != nil {
		return fmt.Errorf("-addr: %w", err)
	}
	openIDs, err := parseIDs(*open)
	if err != nil {
		return fmt.Errorf("-open: %w", err)
	}
	connIDs, err := parseIDs(*conn)
	if err != nil {
		return fmt.Errorf("-connect: %w", err)
	}
	fd, err := openAndConnect(to, openIDs, connIDs)
	if err != nil {
		return err
	}
	f := os.NewFile(uintptr(fd), "socket")
	c, err := net.FileConn(f)
	_ = f.Close()
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	local := c.LocalAddr().(*net.TCPAddr).AddrPort()
	res.Local = netip.AddrPortFrom(local.Addr().Unmap(), local.Port()).String()
	path, err := bufio.NewReader(c).ReadString('\n')
	res.Path = strings.TrimSuffix(path, "\n")
	if err != nil {
		return fmt.Errorf("read path: %w", err)
	}
	_, err = fmt.Fprintf(c, "echo 0\n")
	return err
}

// ids is a uid and a gid.
type ids struct{ uid, gid int }

func parseIDs(s string) (ids, error) {
	u, g, ok := strings.Cut(s, ":")
	if !ok {
		return ids{}, fmt.Errorf("%q: want UID:GID", s)
	}
	uid, uerr := strconv.Atoi(u)
	gid, gerr := strconv.Atoi(g)
	return ids{uid, gid}, errors.Join(uerr, gerr)
}

// become sets the calling thread's real, effective and filesystem ids to id
// and keeps the saved ones 0. Raw system calls: only this thread changes
// (the C library and Go's syscall.Setresuid change every thread).
func become(id ids) error {
	if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, 0, 0, 0); e != 0 {
		return fmt.Errorf("setresuid 0: %w", e)
	}
	if _, _, e := unix.RawSyscall(unix.SYS_SETRESGID, uintptr(id.gid), uintptr(id.gid), 0); e != 0 {
		return fmt.Errorf("setresgid %d: %w", id.gid, e)
	}
	if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, uintptr(id.uid), uintptr(id.uid), 0); e != 0 {
		return fmt.Errorf("setresuid %d: %w", id.uid, e)
	}
	return nil
}

// openAndConnect creates a blocking TCP socket as open and connects it to
// `to` as conn, on a thread that is then thrown away (its ids changed).
func openAndConnect(to netip.AddrPort, open, conn ids) (int, error) {
	type ret struct {
		fd  int
		err error
	}
	done := make(chan ret, 1)
	go func() {
		// Never unlocked: the goroutine's exit ends the thread with its
		// changed ids.
		runtime.LockOSThread()
		fd, err := func() (int, error) {
			if err := become(open); err != nil {
				return -1, err
			}
			var sa unix.Sockaddr
			family := unix.AF_INET
			if to.Addr().Is4() {
				sa = &unix.SockaddrInet4{Addr: to.Addr().As4(), Port: int(to.Port())}
			} else {
				family = unix.AF_INET6
				sa = &unix.SockaddrInet6{Addr: to.Addr().As16(), Port: int(to.Port())}
			}
			fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
			if err != nil {
				return -1, fmt.Errorf("socket: %w", err)
			}
			if err := become(conn); err != nil {
				unix.Close(fd)
				return -1, err
			}
			if err := unix.Connect(fd, sa); err != nil {
				unix.Close(fd)
				return -1, fmt.Errorf("connect %s: %w", to, err)
			}
			return fd, nil
		}()
		done <- ret{fd, err}
	}()
	r := <-done
	return r.fd, r.err
}
