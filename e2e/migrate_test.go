//go:build linux

package e2e

import (
	"bufio"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/shuntmesh/shunt/internal/testutil"
)

// TestMigrate moves a running pod's capture from one backend to another (`shunt migrate`) while the
// app keeps opening connections, and with a connection opened before that is used only after: every
// connection reaches the proxy with its original destination, none fails, and the old backend holds
// nothing of shunt's afterwards.
func TestMigrate(t *testing.T) {
	testutil.RequireRoot(t)
	for _, tc := range []struct {
		from, to variant
		mode     string
		args     []string
	}{
		{"nft", native, "REDIRECT", []string{"--to", "nftables"}},
		{native, "legacy", "REDIRECT", []string{"--to", "iptables", "--force-iptables-binary", "legacy"}},
		{"legacy", "nft", "REDIRECT", []string{"--to", "iptables", "--force-iptables-binary", "nft"}},
		// TPROXY: the policy routing both backends' mangle rules use stays in place throughout.
		{"nft", native, "TPROXY", []string{"--to", "nftables"}},
		{native, "legacy", "TPROXY", []string{"--to", "iptables", "--force-iptables-binary", "legacy"}},
	} {
		t.Run(tc.from.title()+" to "+tc.to.title()+"/"+tc.mode, func(t *testing.T) {
			t.Parallel()
			p := newPod(t, tc.from)
			p.capture(t, nil, injectorArgs(tc.mode)...)
			p.startProxy(t, tc.mode)
			// Inbound, from the remote: TPROXY keeps the remote's address as the app's peer.
			podApp := addr(ipv4.pod, appPort)
			inboundPeer := ipv4.passthrough
			if tc.mode == "TPROXY" {
				inboundPeer = ipv4.remote
			}
			wantIn := viaInbound(podApp) + app("pod", inboundPeer, podApp)
			checkInbound := func(when string) {
				if got := query(t, p.remote, root, "tcp", podApp); got != wantIn {
					t.Errorf("inbound %s: %s, want %s", when, got, wantIn)
				}
			}
			checkInbound("before the migration")
			if tc.mode == "TPROXY" {
				// Refused, changing nothing: with both backends' TPROXY rules installed the proxy's
				// connections stall (seen here when it was allowed).
				argv := append([]string{bins.Path(t, pkgShunt), "migrate"}, append(tc.args, injectorArgs(tc.mode)...)...)
				out, err := p.ns.Exec(nil, nil, argv...)
				if err == nil || !strings.Contains(err.Error()+string(out), "TPROXY mode cannot be migrated") {
					t.Errorf("shunt migrate in TPROXY mode: %v\n%s\nwant a refusal naming TPROXY", err, out)
				}
				if got := query(t, p.ns, appUser, "tcp", addr(ipv4.remote, appPort)); got != viaOutbound(addr(ipv4.remote, appPort))+app("remote", ipv4.pod, addr(ipv4.remote, appPort)) {
					t.Errorf("after the refused migration: %s", got)
				}
				checkInbound("after the refused migration")
				return
			}
			to := addr(ipv4.remote, appPort)
			want := viaOutbound(to) + app("remote", ipv4.pod, to)

			// A connection established before the migration, used after it.
			var held net.Conn
			if err := p.ns.Do(func() error {
				var err error
				held, err = net.DialTimeout("tcp", to.String(), 5*time.Second)
				return err
			}); err != nil {
				t.Fatal(err)
			}
			defer held.Close()

			// New connections all along.
			var (
				wg      sync.WaitGroup
				mu      sync.Mutex
				replies []string
			)
			stop := make(chan struct{})
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					select {
					case <-stop:
						return
					default:
					}
					got := query(t, p.ns, appUser, "tcp", to)
					mu.Lock()
					replies = append(replies, got)
					mu.Unlock()
				}
			}()
			// At least a few connections before the migration starts.
			waitReplies := func(n int) {
				for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
					mu.Lock()
					got := len(replies)
					mu.Unlock()
					if got >= n {
						return
					}
				}
				t.Errorf("fewer than %d connections made in 30s", n)
			}
			waitReplies(3)
			// The state in the middle of a migration, both backends' rules in place, captures too:
			// each step of the migration is one transaction, so no other state exists in between.
			mid := append(append([]string{"iptables", "--reconcile"}, tc.to.args()...), injectorArgs(tc.mode)...)
			if out, err := p.ns.Exec(nil, nil, append([]string{bins.Path(t, pkgShunt)}, mid...)...); err != nil {
				t.Fatalf("install the %s rules next to the %s ones: %v\n%s", tc.to.title(), tc.from.title(), err, out)
			}
			if got := query(t, p.ns, appUser, "tcp", to); got != want {
				t.Errorf("with both backends' rules: %s, want %s", got, want)
			}
			checkInbound("with both backends' rules")
			argv := append([]string{bins.Path(t, pkgShunt), "migrate"}, append(tc.args, injectorArgs(tc.mode)...)...)
			out, err := p.ns.Exec(nil, nil, argv...)
			if err != nil {
				t.Fatalf("shunt migrate: %v\n%s", err, out)
			}
			mu.Lock()
			during := len(replies)
			mu.Unlock()
			waitReplies(during + 3)
			close(stop)
			wg.Wait()

			for i, got := range replies {
				if got != want {
					t.Errorf("connection %d of %d: %s, want %s", i+1, len(replies), got, want)
				}
			}
			if _, err := fmt.Fprintln(held, "hello"); err != nil {
				t.Fatalf("the connection held across the migration: write: %v", err)
			}
			line, err := bufio.NewReader(held).ReadString('\n')
			if got := peerPort.ReplaceAllString(strings.TrimSpace(line), "peer=$1"); err != nil || got != want {
				t.Errorf("the connection held across the migration: %q, %v; want %s", got, err, want)
			}
			checkInbound("after the migration")
			t.Logf("%d connections, %d of them before the migration ended; output:\n%s", len(replies), during, out)

			// The old backend holds nothing of shunt's, the new one the rules.
			mark := "ISTIO_"
			if tc.from == native {
				mark = "istio-proxy-"
			}
			if old := (&pod{variant: tc.from, ns: p.ns}).dump(t); strings.Contains(old, mark) {
				t.Errorf("the rules of %s remain:\n%s", tc.from.title(), old)
			}
			if now := (&pod{variant: tc.to, ns: p.ns}).dump(t); !strings.Contains(now, tc.to.chain("ISTIO_OUTPUT")) {
				t.Errorf("no %s rules after the migration:\n%s", tc.to.title(), now)
			}
		})
	}
}
