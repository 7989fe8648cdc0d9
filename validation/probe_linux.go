package validation

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/shuntmesh/shunt/internal/netns"
	"github.com/shuntmesh/shunt/redirect"
)

// Run performs the validation within v.Timeout.
func (v *Probe) Run(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, v.Timeout)
	defer cancel()
	return netns.Do(v.NetNS, func() error { return v.run(ctx) })
}

func (v *Probe) run(ctx context.Context) error {
	cfg := &v.Config
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	for _, port := range []uint16{cfg.InboundCapturePort, cfg.ProxyPort} {
		ln, err := net.Listen("tcp", net.JoinHostPort("", strconv.Itoa(int(port))))
		if err != nil {
			return fmt.Errorf("listen on capture port %d (is the proxy already running?): %w", port, err)
		}
		lns = append(lns, ln)
		go serveOriginalDst(ln, port)
	}
	targets := []netip.AddrPort{netip.AddrPortFrom(redirect.PassthroughV4, v.ProbePort)}
	if cfg.IPv6 {
		targets = append(targets, netip.AddrPortFrom(redirect.PassthroughV6, v.ProbePort))
	}
	for _, target := range targets {
		got, err := v.connect(ctx, target)
		if err != nil {
			return fmt.Errorf("connection as uid %d to %s was not captured by the inbound listener :%d: %w",
				cfg.ProxyUIDs[0], target, cfg.InboundCapturePort, err)
		}
		want := fmt.Sprintf("port=%d orig=%s", cfg.InboundCapturePort, target)
		if got != want {
			return fmt.Errorf("connection as uid %d to %s: listener reported %q, want %q", cfg.ProxyUIDs[0], target, got, want)
		}
		if v.Logger != nil {
			v.Logger.Info("validation probe captured", "target", target.String(), "listener", cfg.InboundCapturePort)
		}
	}
	return nil
}

// probe connects to target as the proxy's uid and returns what the capturing listener answered.
func (v *Probe) connect(ctx context.Context, target netip.AddrPort) (string, error) {
	uid, gid := v.Config.ProxyUIDs[0], v.Config.ProxyGIDs[0]
	if uint32(os.Geteuid()) == uid {
		return Client(ctx, target.String())
	}
	if len(v.ClientCommand) == 0 {
		return "", errors.New("no probe client command to run as the proxy's uid")
	}
	deadline, _ := ctx.Deadline()
	args := append(v.ClientCommand[1:], target.String(), time.Until(deadline).String())
	cmd := exec.CommandContext(ctx, v.ClientCommand[0], args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid}}
	out, err := cmd.Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) && len(ee.Stderr) > 0 {
			return "", errors.New(strings.TrimSpace(string(ee.Stderr)))
		}
		return "", err
	}
	return strings.TrimSpace(string(out)), nil
}

// Client connects to addr and returns the line the listener answers. It connects from the
// family's localhost address: connecting to ::6 would otherwise pick ::6 as the source, which the rules
// rightly treat as the proxy's passthrough and leave alone.
func Client(ctx context.Context, addr string) (string, error) {
	target, err := netip.ParseAddrPort(addr)
	if err != nil {
		return "", err
	}
	local := netip.IPv6Loopback()
	if target.Addr().Is4() {
		local = netip.AddrFrom4([4]byte{127, 0, 0, 1})
	}
	d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(local, 0))}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	if deadline, ok := ctx.Deadline(); ok {
		conn.SetDeadline(deadline)
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("read answer: %w", err)
	}
	return strings.TrimSpace(line), nil
}

// serveOriginalDst answers every connection with the listener's port and the original destination.
func serveOriginalDst(ln net.Listener, port uint16) {
	for {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		orig, err := OriginalDst(conn.(*net.TCPConn))
		if err != nil {
			fmt.Fprintf(conn, "port=%d error=%v\n", port, err)
		} else {
			fmt.Fprintf(conn, "port=%d orig=%s\n", port, orig)
		}
		conn.Close()
	}
}

// OriginalDst returns the destination a REDIRECTed connection was sent to, from SO_ORIGINAL_DST (IPv4)
// or IP6T_SO_ORIGINAL_DST (IPv6).
func OriginalDst(conn *net.TCPConn) (netip.AddrPort, error) {
	raw, err := conn.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, err
	}
	local := conn.LocalAddr().(*net.TCPAddr).AddrPort()
	const soOriginalDst = 80 // SO_ORIGINAL_DST and IP6T_SO_ORIGINAL_DST
	var dst netip.AddrPort
	var serr error
	err = raw.Control(func(fd uintptr) {
		if local.Addr().Unmap().Is4() {
			var sa unix.RawSockaddrInet4
			size := uint32(unsafe.Sizeof(sa))
			serr = getsockopt(int(fd), unix.SOL_IP, soOriginalDst, unsafe.Pointer(&sa), &size)
			dst = netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), netPort(&sa.Port))
			return
		}
		var sa unix.RawSockaddrInet6
		size := uint32(unsafe.Sizeof(sa))
		serr = getsockopt(int(fd), unix.SOL_IPV6, soOriginalDst, unsafe.Pointer(&sa), &size)
		dst = netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), netPort(&sa.Port))
	})
	if err != nil {
		return netip.AddrPort{}, err
	}
	if serr != nil {
		return netip.AddrPort{}, fmt.Errorf("getsockopt SO_ORIGINAL_DST: %w", serr)
	}
	return dst, nil
}

func getsockopt(fd, level, name int, val unsafe.Pointer, size *uint32) error {
	_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), uintptr(level), uintptr(name), uintptr(val), uintptr(unsafe.Pointer(size)), 0)
	if errno != 0 {
		return errno
	}
	return nil
}

// netPort reads a port stored in network byte order.
func netPort(p *uint16) uint16 {
	b := (*[2]byte)(unsafe.Pointer(p))
	return uint16(b[0])<<8 | uint16(b[1])
}
