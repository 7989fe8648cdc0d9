package capture

import (
	"context"
	"encoding/json"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/shuntmesh/shunt/backend"
	"github.com/shuntmesh/shunt/internal/netns"
	"github.com/shuntmesh/shunt/internal/testutil"
	"github.com/shuntmesh/shunt/redirect"
)

// TestTraceWatchLive programs the default rules into a fresh namespace with each backend, makes one
// real connection they capture — the app (uid 0) dialing a remote address routed by eth0 (a veth whose peer stays in the namespace),
// REDIRECTed to a listener on 15001 — while `shunt trace --network-namespace … --watch` waits, and
// checks that the rules whose counters moved are exactly the traced path's, and that the trace
// shows the counters beside its rules.
func TestTraceWatchLive(t *testing.T) {
	testutil.RequireRoot(t)
	for _, s := range []backend.Settings{{IptablesVariant: "nft"}, {IptablesVariant: "legacy"}, {NativeNFTables: true}} {
		name := "iptables-" + s.IptablesVariant
		if s.NativeNFTables {
			name = "nftables"
		}
		t.Run(name, func(t *testing.T) {
			n := testutil.NewNetNS(t) // deleted when the test ends, failed or not
			// No IPv6: its neighbour discovery would be the only other traffic of the namespace.
			n.Run(t, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
			n.Run(t, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth1")
			n.Run(t, "ip", "link", "set", "eth1", "up")
			n.Run(t, "ip", "addr", "add", "10.0.0.2/24", "dev", "eth0")
			n.Run(t, "ip", "link", "set", "eth0", "up")
			n.Run(t, "ip", "route", "add", "default", "via", "10.0.0.1", "dev", "eth0")

			s.NetNS = n.Path()
			b, _, err := backend.Select(s)
			if err != nil {
				t.Fatal(err)
			}
			cfg := redirect.DefaultConfig()
			cfg.NativeNFTables = s.NativeNFTables
			plan, err := b.Plan(cfg)
			if err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			if err := b.Apply(ctx, &plan, backend.Mode{}); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				if _, err := b.Remove(ctx); err != nil {
					t.Errorf("remove %s: %v", b.Name(), err)
				}
			})

			var ln net.Listener
			if err := n.Do(func() (err error) { ln, err = net.Listen("tcp4", "127.0.0.1:15001"); return err }); err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			accepted := make(chan error, 1)
			go func() {
				c, err := ln.Accept()
				if err == nil {
					c.Close()
				}
				accepted <- err
			}()

			var dialErr error
			connect := func() {
				dialErr = n.Do(func() error {
					c, err := net.DialTimeout("tcp4", "10.0.0.99:80", 5*time.Second)
					if err != nil {
						return err
					}
					return c.Close()
				})
			}
			tt := traceTest{installed: backend.Installed, podAddrs: netns.GlobalAddrs, watching: connect}
			out, stderr, err := tt.run(t, "--network-namespace", n.Path(), "--ipv6=false", "--dst", "10.0.0.99:80",
				"--watch", "500ms", "--json")
			if want := "shunt trace: counters read; watching for 500ms: make the connection now\n"; err != nil || stderr != want {
				t.Fatalf("%v; stderr %q, want %q", err, stderr, want)
			}
			if dialErr != nil {
				t.Fatalf("the connection the rules capture: %v", dialErr)
			}
			select {
			case err := <-accepted:
				if err != nil {
					t.Fatalf("accept on :15001: %v", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("nothing reached the listener on :15001")
			}

			var rep traceReport
			if err := json.Unmarshal([]byte(out), &rep); err != nil {
				t.Fatalf("%v:\n%s", err, out)
			}
			if rep.Verdict.Kind != "captured" || rep.Verdict.Port != 15001 || rep.Backend != b.Name() {
				t.Errorf("verdict %+v by %s, want captured by :15001 as %s holds the rules", rep.Verdict, rep.Backend, b.Name())
			}
			if rep.Watch == nil {
				t.Fatalf("no watch in the report:\n%s", out)
			}
			var moved []string
			for _, m := range rep.Watch.Moved {
				moved = append(moved, m.Ref)
			}
			if len(rep.Path) == 0 || !slices.Equal(moved, rep.Path) || !rep.Watch.Agrees {
				t.Errorf("counters moved on %q, the traced path is %q (agrees %v)", moved, rep.Path, rep.Watch.Agrees)
			}
			for _, st := range rep.Steps {
				if st.Ref != "" && st.Counters == nil {
					t.Errorf("%s: no counters beside the rule", st.Ref)
				}
				if st.Matched && st.Counters != nil && st.Counters.Packets == 0 {
					t.Errorf("%s: matched but counted no packet", st.Ref)
				}
			}

			// The same in words, without --watch: the counters beside the rules.
			text, _, err := tt.run(t, "--network-namespace", n.Path(), "--ipv6=false", "--dst", "10.0.0.99:80")
			if err != nil || !strings.Contains(text, "as "+b.Name()+" holds them in "+n.Path()) || !strings.Contains(text, "[1 pkt ") {
				t.Errorf("%v:\n%s", err, text)
			}
		})
	}
}

// TestTraceWatchDisagrees: a connection other than the one traced shows up as a disagreement.
func TestTraceWatchDisagrees(t *testing.T) {
	testutil.RequireRoot(t)
	n := testutil.NewNetNS(t)
	n.Run(t, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
	b, _, err := backend.Select(backend.Settings{NetNS: n.Path(), IptablesVariant: "legacy"})
	if err != nil {
		t.Fatal(err)
	}
	plan, err := b.Plan(redirect.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Apply(context.Background(), &plan, backend.Mode{}); err != nil {
		t.Fatal(err)
	}
	// A connection to localhost, which the rules return: traced instead is one they capture.
	connect := func() {
		_ = n.Do(func() error {
			c, err := net.DialTimeout("tcp4", "127.0.0.1:9", time.Second)
			if err == nil {
				c.Close()
			}
			return err
		})
	}
	tt := traceTest{installed: backend.Installed, podAddrs: netns.GlobalAddrs, watching: connect}
	out, _, err := tt.run(t, "--network-namespace", n.Path(), "--ipv6=false", "--dst", "10.0.0.99:80", "--pod-ip", "10.0.0.2", "--watch", "200ms")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "DISAGREES") || !strings.Contains(out, "not counted: IPv4/nat/ISTIO_OUTPUT#8") {
		t.Errorf("no disagreement:\n%s", out)
	}
}
