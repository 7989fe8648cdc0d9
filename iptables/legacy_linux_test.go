package iptables

import (
	"strings"
	"testing"

	"github.com/shuntmesh/shunt/internal/testutil"
	"github.com/shuntmesh/shunt/redirect"
)

// TestProgramLegacyMatchesRestore: rules programmed with IPT_SO_SET_REPLACE are, as
// iptables-legacy-save reads them, exactly those iptables-legacy-restore installs from Render's text.
func TestProgramLegacyMatchesRestore(t *testing.T) {
	testutil.RequireRoot(t)
	for name, cfg := range programCases(t) {
		plan := mustBuild(t, cfg)
		for i := range plan.Families {
			fp := &plan.Families[i]
			t.Run(name+"/"+fp.Family.String(), func(t *testing.T) {
				direct, viaRestore := testutil.NewNetNS(t), testutil.NewNetNS(t)
				if err := inNetNS(direct.Path(), func() error { return programLegacy(fp) }); err != nil {
					t.Fatalf("programLegacy: %v", err)
				}
				tool := "iptables"
				if fp.Family == redirect.IPv6 {
					tool = "ip6tables"
				}
				cmd := viaRestore.Command(nil, tool+"-legacy-restore", "--noflush")
				cmd.Stdin = strings.NewReader(string(Render(fp, RenderOptions{})))
				if out, err := cmd.CombinedOutput(); err != nil {
					t.Fatalf("restore: %v: %s", err, out)
				}
				got, err1 := direct.Command(nil, tool+"-legacy-save").CombinedOutput()
				want, err2 := viaRestore.Command(nil, tool+"-legacy-save").CombinedOutput()
				if err1 != nil || err2 != nil {
					t.Fatalf("save: %v %v: %s %s", err1, err2, got, want)
				}
				if g, w := saveNoise.ReplaceAllString(string(got), ""), saveNoise.ReplaceAllString(string(want), ""); g != w {
					t.Errorf("iptables-legacy-save differs:\nset-replace:\n%s\nrestore:\n%s", g, w)
				}
			})
		}
	}
}
