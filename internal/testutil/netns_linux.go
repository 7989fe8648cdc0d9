package testutil

import (
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Netlink returns a netlink handle whose socket lives in n, closed when t
// ends; the calling thread stays where it is.
func (n *NetNS) Netlink(t testing.TB) *netlink.Handle {
	t.Helper()
	ns, err := netns.GetFromPath(n.Path())
	if err != nil {
		t.Fatalf("open %s: %v", n.Path(), err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatalf("netlink handle in %s: %v", n.Name, err)
	}
	t.Cleanup(h.Close)
	return h
}

// LinkUpTimeout bounds how long WaitLinkUp waits.
const LinkUpTimeout = 10 * time.Second

// WaitLinkUp waits until the link name in n is operationally up. The kernel
// notices a veth's carrier asynchronously (linkwatch, up to a second after
// `ip link set up`) and drops what is sent through the link before, which
// would cost the first connection a retransmission.
func (n *NetNS) WaitLinkUp(t testing.TB, name string) {
	t.Helper()
	ns, err := netns.GetFromPath(n.Path())
	if err != nil {
		t.Fatalf("open %s: %v", n.Path(), err)
	}
	defer ns.Close()
	updates := make(chan netlink.LinkUpdate)
	done := make(chan struct{})
	defer func() {
		close(done)
		for range updates { // until the subscription closes it
		}
	}()
	if err := netlink.LinkSubscribeWithOptions(updates, done, netlink.LinkSubscribeOptions{
		Namespace: &ns, ListExisting: true,
	}); err != nil {
		t.Fatalf("subscribe to links in %s: %v", n.Name, err)
	}
	timeout := time.NewTimer(LinkUpTimeout)
	defer timeout.Stop()
	for {
		select {
		case u, ok := <-updates:
			if !ok {
				t.Fatalf("link subscription in %s ended before %s was up", n.Name, name)
			}
			if u.Attrs().Name == name && u.Attrs().OperState == netlink.OperUp {
				return
			}
		case <-timeout.C:
			t.Fatalf("%s in %s not up after %v", name, n.Name, LinkUpTimeout)
		}
	}
}
