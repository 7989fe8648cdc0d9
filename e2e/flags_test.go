//go:build linux

package e2e

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/shuntmesh/shunt/internal/testutil"
)

// A flag a command would ignore is an error, not a no-op: these tests run
// the real binary on real namespaces and check that such a command line
// fails, naming the flag, before it changes anything.

// shuntBare runs `shunt ARGS...` in the pod as given, without the variant's
// flags (which validate does not take), and returns its output and error.
func (p *pod) shuntBare(t *testing.T, env []string, args ...string) (string, error) {
	t.Helper()
	out, err := p.ns.Exec(nil, env, append([]string{bins.Path(t, pkgShunt)}, args...)...)
	return string(out), err
}

// refused checks that err is a usage error (exit status 1, not validation's
// 126) whose message names every string of want.
func refused(t *testing.T, what string, out string, err error, want ...string) {
	t.Helper()
	if code := exitCode(err); code != 1 {
		t.Errorf("%s: exit status %d (%v), want 1\nstdout:\n%s", what, code, err, out)
		return
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("%s: error %q does not name %s", what, err, w)
		}
	}
}

// TestFlagsValidateChangesNothing: `shunt validate` takes no flag that
// would change the rules: with --cleanup-only (or another of `shunt
// iptables`' flags it does not use) it fails and the installed rules are
// byte-identical afterwards; with the flags it uses it validates and still
// changes nothing.
func TestFlagsValidateChangesNothing(t *testing.T) {
	testutil.RequireRoot(t)
	forEachPod(t, func(t *testing.T, p *pod, mode string) {
		p.capture(t, nil, fullArgs(mode)...)
		before := p.state(t)
		for _, args := range [][]string{
			{"validate", "--cleanup-only"},
			{"validate", "--dry-run"},
			{"validate", "--force-apply"},
			{"validate", "--reconcile", "-m", "TPROXY"},
			{"validate", "--skip-rule-apply"},
		} {
			out, err := p.shuntBare(t, nil, args...)
			refused(t, strings.Join(args, " "), out, err, "unknown flag", args[1])
			if diff := cmp.Diff(before, p.state(t)); diff != "" {
				t.Fatalf("shunt %s changed the rules (-before +after):\n%s", strings.Join(args, " "), diff)
			}
		}
		// validate has no --cleanup-only or --force-apply: their variables are not read.
		if out, err := p.shuntBare(t, []string{"CLEANUP_ONLY=true", "FORCE_APPLY=true"},
			"validate", "-p", "15001", "-z", "15006", "-u", "1337", "--ipv6=true"); err != nil {
			t.Fatalf("validate of a captured pod: %v\n%s", err, out)
		}
		if diff := cmp.Diff(before, p.state(t)); diff != "" {
			t.Errorf("validate changed the rules (-before +after):\n%s", diff)
		}
	})
}

// TestFlagsIptablesIgnoredFailEarly: a `shunt iptables` command line in
// which a flag would be ignored fails before it touches the kernel, both in
// a pod without rules (nothing is applied) and in a captured one (nothing is
// applied, replaced or cleaned up). The injector's environment does not make
// a cleanup fail.
func TestFlagsIptablesIgnoredFailEarly(t *testing.T) {
	testutil.RequireRoot(t)
	forEachPod(t, func(t *testing.T, p *pod, mode string) {
		check := func(state string, env []string, args []string, want ...string) {
			t.Helper()
			out, err := p.shuntErr(t, env, append([]string{"iptables"}, args...)...)
			what := fmt.Sprintf("%s shunt iptables %s", strings.Join(env, " "), strings.Join(args, " "))
			refused(t, what, out, err, want...)
			if diff := cmp.Diff(state, p.state(t)); diff != "" {
				t.Fatalf("%s changed the pod (-before +after):\n%s", what, diff)
			}
		}
		with := func(extra ...string) []string { return append(slices.Clone(fullArgs(mode)), extra...) }

		empty := p.state(t)
		check(empty, nil, with("--iptables-probe-port", "15003"), "--iptables-probe-port", "--run-validation")
		check(empty, nil, with("--probe-timeout", "2s"), "--probe-timeout", "--run-validation")
		check(empty, nil, with("--explain"), "--explain", "--dry-run")
		check(empty, nil, with("--skip-rule-apply"), "--skip-rule-apply", "--run-validation")
		check(empty, nil, with("--reconcile", "--force-apply"), "--reconcile", "--force-apply")
		check(empty, nil, with("--dual-stack"), "--dual-stack", "--ipv6")
		check(empty, []string{"DRY_RUN=true"}, with("--force-apply"), "--dry-run ($DRY_RUN)", "--force-apply")

		p.capture(t, nil, fullArgs(mode)...)
		captured := p.state(t)
		check(captured, nil, []string{"--cleanup-only", "-p", "15001"}, "--cleanup-only", "--envoy-port")
		check(captured, nil, []string{"--cleanup-only", "--dry-run"}, "--cleanup-only", "--dry-run")
		check(captured, []string{"CLEANUP_ONLY=true"}, []string{"-m", mode}, "--cleanup-only ($CLEANUP_ONLY)", "--istio-inbound-interception-mode")
		check(captured, nil, with("-o", "5555", "--reconcile", "--run-validation", "--skip-rule-apply"), "--skip-rule-apply", "--reconcile")

		// Environment variables the injector sets (ProxyMetadata) fill only
		// flags: a cleanup ignores them and succeeds.
		p.capture(t, []string{"ENVOY_PORT=16001", "ISTIO_META_DNS_CAPTURE=true", "INVALID_DROP=true"}, "--cleanup-only")
		if diff := cmp.Diff(empty, p.state(t)); diff != "" {
			t.Errorf("cleanup with the injector's environment left the pod changed (-before +after):\n%s", diff)
		}
	})
}

// TestFlagsEBPFJoinRegistersOnly: `shunt ebpf join` with a flag of `shunt
// iptables` it would ignore (--dry-run above all) fails and registers no
// pod; without it, the same join registers the pod.
func TestFlagsEBPFJoinRegistersOnly(t *testing.T) {
	testutil.RequireRoot(t)
	m := newMeshPod(t)
	m.load(t)
	join := append([]string{"join", "--netns", m.ns.Path(), "--pin-dir", m.pins}, joinCapture...)
	for _, flag := range []string{"--dry-run", "--cleanup-only", "--force-apply", "--reconcile", "--run-validation",
		"--skip-rule-apply", "--iptables-probe-port=15002", "--probe-timeout=1s", "--explain", "--native-nftables",
		"--force-iptables-binary=nft",
		// inbound capture is the iptables rules' job: join would ignore these
		"--istio-inbound-interception-mode=TPROXY", "--istio-inbound-ports=8080", "--istio-local-exclude-ports=8081",
		"--inbound-tunnel-port=15009", "--kube-virt-interfaces=tap0", "--istio-inbound-tproxy-mark=7",
		"--istio-inbound-tproxy-route-table=7", "--drop-invalid"} {
		args := append(slices.Clone(join), flag)
		out, err := m.ebpfCmd(t, args...)
		name, _, _ := strings.Cut(flag, "=")
		refused(t, "shunt ebpf "+strings.Join(args, " "), out, err, "unknown flag: "+name)
		if s := m.status(t); len(s.Pods) != 0 {
			t.Fatalf("shunt ebpf %s registered pods %+v", strings.Join(args, " "), s.Pods)
		}
	}
	m.mustEBPF(t, join...)
	if s := m.status(t); !s.has(m.netnsCookie(t)) || len(s.Pods) != 1 {
		t.Errorf("after join: pods %+v, want the pod's netns cookie %d", s.Pods, m.netnsCookie(t))
	}
}
