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
		args     []string
	}{
		{"nft", native, []string{"--to", "nftables"}},
		{native, "legacy", []string{"--to", "iptables", "--force-iptables-binary", "legacy"}},
		{"legacy", "nft", []string{"--to", "iptables", "--force-iptables-binary", "nft"}},
	} {
		t.Run(tc.from.title()+" to "+tc.to.title(), func(t *testing.T) {
			t.Parallel()
			p := newPod(t, tc.from)
			p.capture(t, nil, injectorArgs("REDIRECT")...)
			p.startProxy(t, "REDIRECT")
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
			mid := append(append([]string{"iptables", "--reconcile"}, tc.to.args()...), injectorArgs("REDIRECT")...)
			if out, err := p.ns.Exec(nil, nil, append([]string{bins.Path(t, pkgShunt)}, mid...)...); err != nil {
				t.Fatalf("install the %s rules next to the %s ones: %v\n%s", tc.to.title(), tc.from.title(), err, out)
			}
			if got := query(t, p.ns, appUser, "tcp", to); got != want {
				t.Errorf("with both backends' rules: %s, want %s", got, want)
			}
			argv := append([]string{bins.Path(t, pkgShunt), "migrate"}, append(tc.args, injectorArgs("REDIRECT")...)...)
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
