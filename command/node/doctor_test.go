package node

import (
	"bytes"
	"encoding/json"
	"errors"
	"os/exec"
	"strings"
	"testing"

	"github.com/shuntmesh/shunt/command/capture"
	"github.com/shuntmesh/shunt/doctor"
	"github.com/shuntmesh/shunt/internal/testutil"
	"github.com/shuntmesh/shunt/redirect"
)

// TestDoctorRefuses: arguments, flags doctor does not have and a namespace that does not exist are
// errors naming what was given.
func TestDoctorRefuses(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"extra"}, "unknown command"},
		{[]string{"--native-nftables"}, "unknown flag: --native-nftables"},
		{[]string{"--network-namespace", "/nonexistent/ns"}, `--network-namespace: invalid value "/nonexistent/ns"`},
		{[]string{"--netns", "/nonexistent/ns"}, `--network-namespace: invalid value "/nonexistent/ns"`},
		{[]string{"-m", "tproxy"}, `--istio-inbound-interception-mode: invalid value "tproxy": want REDIRECT or TPROXY`},
	} {
		err := testutil.ParseCommand(newDoctorCmd(capture.Env{}), tc.args)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want %q", tc.args, err, tc.want)
		}
	}
	var fe *redirect.FieldError
	if err := testutil.ParseCommand(newDoctorCmd(capture.Env{}), []string{"--network-namespace=/nonexistent"}); !errors.As(err, &fe) {
		t.Errorf("missing namespace: %v, want a field error", err)
	}
}

func runDoctor(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out bytes.Buffer
	cmd := newDoctorCmd(capture.Env{Stdout: &out, Stderr: &out})
	cmd.SetArgs(args)
	cmd.SilenceUsage, cmd.SilenceErrors = true, true
	err := cmd.Execute()
	return out.String(), err
}

// TestDoctorExitStatus: no warning exits 0; warnings print the report and exit 2; --json is the report.
func TestDoctorExitStatus(t *testing.T) {
	testutil.RequireRoot(t)
	ns := testutil.NewNetNS(t)
	out, err := runDoctor(t, "--network-namespace", ns.Path())
	if err != nil || !strings.Contains(out, "  IPv4, IPv6: iptables-nft (") || strings.Contains(out, "warning:") {
		t.Errorf("fresh namespace: %v\n%s", err, out)
	}
	if _, lerr := exec.LookPath("iptables-legacy"); lerr != nil {
		t.Skip("no iptables-legacy here")
	}
	ns.Run(t, "iptables-legacy", "-t", "nat", "-A", "OUTPUT", "-j", "ACCEPT")
	out, err = runDoctor(t, "--netns", ns.Path())
	var ee *capture.ExitError
	if !errors.As(err, &ee) || ee.Code != ExitDoctorWarnings || !strings.Contains(out, "\nwarning: legacy iptables tables exist") {
		t.Errorf("legacy tables: %v\n%s; want exit %d with the warning", err, out, ExitDoctorWarnings)
	}
	out, err = runDoctor(t, "--network-namespace", ns.Path(), "--json")
	var r doctor.Report
	if jerr := json.Unmarshal([]byte(out), &r); jerr != nil || !errors.As(err, &ee) || r.Decision.Backend != "iptables-legacy" || len(r.Warnings) == 0 {
		t.Errorf("--json: %v, %v, %+v\n%s", err, jerr, r, out)
	}
}
