//go:build linux

package e2e

import (
	"bufio"
	"fmt"
	"net"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/shuntmesh/shunt/internal/testutil"
)

// TestMigrate moves a running pod's capture from one backend to another (`shunt migrate`) while the
// app keeps opening connections, and with a connection opened before that is used only after: every
// connection reaches the proxy with its original destination, none fails, and the old backend holds
// nothing of shunt's afterwards. The state in the middle (`shunt migrate --stage`: both backends'
// rules, with the migration guard in TPROXY mode) is probed on its own, both directions.
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
		// TPROXY: the policy routing both backends' mangle rules use stays in place throughout, and
		// the migration guard keeps the two mangle tables from marking each other's connections.
		{"nft", native, "TPROXY", []string{"--to", "nftables"}},
		{native, "legacy", "TPROXY", []string{"--to", "iptables", "--force-iptables-binary", "legacy"}},
		{"legacy", "nft", "TPROXY", []string{"--to", "iptables", "--force-iptables-binary", "nft"}},
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

			// New connections all along, at least a few before the migration starts.
			conns := startStream(t, p.ns, appUser, to)
			conns.waitFor(3)
			// The state in the middle of a migration, both backends' rules in place, captures too:
			// each step of the migration is one transaction per table, so no other state exists in
			// between.
			argv := append([]string{bins.Path(t, pkgShunt), "migrate"}, append(tc.args, injectorArgs(tc.mode)...)...)
			if out, err := p.ns.Exec(nil, nil, append(argv, "--stage")...); err != nil {
				t.Fatalf("shunt migrate --stage: %v\n%s", err, out)
			}
			if got := query(t, p.ns, appUser, "tcp", to); got != want {
				t.Errorf("with both backends' rules: %s, want %s", got, want)
			}
			checkInbound("with both backends' rules")
			out, err := p.ns.Exec(nil, nil, argv...)
			if err != nil {
				t.Fatalf("shunt migrate: %v\n%s", err, out)
			}
			during := conns.count()
			conns.waitFor(during + 3)
			total := conns.end(want)
			if _, err := fmt.Fprintln(held, "hello"); err != nil {
				t.Fatalf("the connection held across the migration: write: %v", err)
			}
			line, err := bufio.NewReader(held).ReadString('\n')
			if got := peerPort.ReplaceAllString(strings.TrimSpace(line), "peer=$1"); err != nil || got != want {
				t.Errorf("the connection held across the migration: %q, %v; want %s", got, err, want)
			}
			checkInbound("after the migration")
			t.Logf("%d connections, %d of them before the migration ended; output:\n%s", total, during, out)

			// The old backend holds nothing of shunt's (no rule at all: the guard of a TPROXY
			// migration sits in a built-in chain), the new one its rules without the guard.
			anyRule, guard := regexp.MustCompile(`(?m)^(\[\d+:\d+\] )?-A `), "! -i lo"
			if tc.from == native {
				anyRule = regexp.MustCompile(`istio-proxy-`)
			}
			if tc.to == native {
				guard = `iifname != "lo"`
			}
			if old := (&pod{variant: tc.from, ns: p.ns}).dump(t); anyRule.MatchString(old) {
				t.Errorf("the rules of %s remain:\n%s", tc.from.title(), old)
			}
			now := (&pod{variant: tc.to, ns: p.ns}).dump(t)
			if !strings.Contains(now, tc.to.chain("ISTIO_OUTPUT")) {
				t.Errorf("no %s rules after the migration:\n%s", tc.to.title(), now)
			}
			if strings.Contains(now, guard) {
				t.Errorf("the migration guard remains in the %s rules:\n%s", tc.to.title(), now)
			}
		})
	}
}
