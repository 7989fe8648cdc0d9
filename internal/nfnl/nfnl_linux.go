// Package nfnl is a blocking NETLINK_NETFILTER socket for the few requests shunt makes itself, and
// the one-round-trip nftables transaction both rule backends commit with.
package nfnl

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sync"
	"syscall"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Sock is a blocking NETLINK_NETFILTER socket for a few requests: no poller, no goroutines.
type Sock struct {
	fd  int
	buf *[]byte // what Recv reads into, from recvBufs
}

// recvBufs holds the buffers sockets receive into, given back by Close: a process that reads the
// rules once pays for every fresh page.
var recvBufs = sync.Pool{New: func() any { b := make([]byte, 1<<16); return &b }}

// Open opens a socket in the current network namespace.
func Open() (*Sock, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
	if err != nil {
		return nil, fmt.Errorf("netlink socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("bind netlink socket: %w", err)
	}
	return &Sock{fd: fd}, nil
}

// Close closes the socket.
func (s *Sock) Close() {
	unix.Close(s.fd)
	if s.buf != nil {
		recvBufs.Put(s.buf)
		s.buf = nil
	}
}

// Send writes msgs in one datagram, numbering them.
func (s *Sock) Send(msgs []netlink.Message) error {
	var buf []byte
	for i := range msgs {
		msgs[i].Header.Sequence = uint32(i + 1)
		msgs[i].Header.Length = uint32((unix.NLMSG_HDRLEN + len(msgs[i].Data) + unix.NLMSG_ALIGNTO - 1) &^ (unix.NLMSG_ALIGNTO - 1))
		b, err := msgs[i].MarshalBinary()
		if err != nil {
			return err
		}
		buf = append(buf, b...)
	}
	return unix.Sendto(s.fd, buf, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK})
}

// Recv reads one datagram of replies; an error reply becomes an error.
func (s *Sock) Recv() ([]syscall.NetlinkMessage, error) {
	if s.buf == nil {
		s.buf = recvBufs.Get().(*[]byte)
	}
	n, err := unix.Read(s.fd, *s.buf)
	if err != nil {
		return nil, err
	}
	replies, err := syscall.ParseNetlinkMessage(slices.Clone((*s.buf)[:n]))
	if err != nil {
		return nil, err
	}
	for _, r := range replies {
		if r.Header.Type == unix.NLMSG_ERROR && len(r.Data) >= 4 {
			if errno := int32(binary.NativeEndian.Uint32(r.Data)); errno != 0 {
				return nil, syscall.Errno(-errno)
			}
		}
	}
	return replies, nil
}

// Dump sends a dump request and returns every reply up to NLMSG_DONE.
func (s *Sock) Dump(req netlink.Message) ([]syscall.NetlinkMessage, error) {
	req.Header.Flags |= netlink.Request | netlink.Dump
	if err := s.Send([]netlink.Message{req}); err != nil {
		return nil, err
	}
	var all []syscall.NetlinkMessage
	for {
		replies, err := s.Recv()
		if err != nil {
			return nil, err
		}
		for _, r := range replies {
			if r.Header.Type == unix.NLMSG_DONE {
				return all, nil
			}
			all = append(all, r)
		}
	}
}

// DumpTables returns the replies, one a table, to a dump of the nftables tables of family
// (unix.NFPROTO_INET and the like; unix.AF_UNSPEC for every family). A reply's Data starts with the
// table's nfgenmsg: its family first.
func (s *Sock) DumpTables(family uint8) ([]syscall.NetlinkMessage, error) {
	return s.Dump(netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETTABLE)},
		Data:   []byte{family, unix.NFNETLINK_V0, 0, 0},
	})
}

// Transact commits msgs, a batch from NFNL_MSG_BATCH_BEGIN to NFNL_MSG_BATCH_END, in one send and
// one acknowledgement: only the last message asks for one. The kernel reports any failing message
// regardless, and then aborts the whole batch, so that the acknowledgement means all went in.
func Transact(msgs []netlink.Message) error {
	if len(msgs) < 3 {
		return errors.New("empty nftables batch")
	}
	for i := range msgs {
		msgs[i].Header.Flags &^= netlink.Acknowledge
	}
	msgs[len(msgs)-2].Header.Flags |= netlink.Acknowledge
	sock, err := Open()
	if err != nil {
		return err
	}
	defer sock.Close()
	if err := sock.Send(msgs); err != nil {
		return fmt.Errorf("send nftables batch: %w", err)
	}
	last := msgs[len(msgs)-2].Header.Sequence
	for {
		replies, err := sock.Recv()
		if err != nil {
			return err
		}
		for _, r := range replies {
			if r.Header.Type == unix.NLMSG_ERROR && r.Header.Seq == last {
				return nil
			}
		}
	}
}
