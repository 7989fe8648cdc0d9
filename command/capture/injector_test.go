package capture

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/shuntmesh/shunt/internal/testutil"
	"github.com/shuntmesh/shunt/redirect"
)

// setInjectorEnv sets the variables the tests read, and unsets the modes' variables.
func setInjectorEnv(t *testing.T, env map[string]string) {
	t.Helper()
	for _, k := range []string{"CLEANUP_ONLY", "DRY_RUN", "FORCE_APPLY", "RECONCILE", "RUN_VALIDATION", "SKIP_RULE_APPLY",
		"FORCE_IPTABLES_BINARY", "NATIVE_NFTABLES", "ENVOY_PORT", "DUAL_STACK"} {
		t.Setenv(k, "")
	}
	for k, v := range env {
		t.Setenv(k, v)
	}
}

// TestInjectorArgs: the argument lists Istio's sidecar injector writes for its init container (and,
// with istio-cni, its validation container) are accepted and build the Config they describe.
func TestInjectorArgs(t *testing.T) {
	for _, mode := range []string{"REDIRECT", "TPROXY"} {
		for _, cni := range []bool{false, true} {
			for _, forceApply := range []bool{false, true} {
				for _, native := range []bool{false, true} {
					for _, optional := range []bool{false, true} {
						if cni && forceApply { // the template passes --force-apply only without istio-cni
							continue
						}
						args := []string{"istio-iptables", "-p", "15001", "-z", "15006", "-u", "1337", "-m", mode,
							"-i", "*", "-x", "", "-b", "*", "-d", "15090,15021,15020"}
						if optional {
							args = append(args, "-q", "3306,5432", "-o", "5555", "-k", "eth1", "-c", "eth2")
						}
						args = append(args, "--log_output_level=default:info")
						if optional {
							args = append(args, "--log_as_json")
						}
						if cni {
							args = append(args, "--run-validation", "--skip-rule-apply")
						}
						if forceApply {
							args = append(args, "--force-apply")
						}
						if native {
							args = append(args, "--native-nftables")
						}
						t.Run(strings.Join(args[1:], " "), func(t *testing.T) {
							// ProxyMetadata becomes the container's environment.
							setInjectorEnv(t, map[string]string{"ISTIO_META_DNS_CAPTURE": "true", "ISTIO_DUAL_STACK": "true", "INVALID_DROP": "true"})
							root := &cobra.Command{Use: "shunt"}
							ipt, f := newIptablesCmd(Env{Stdin: strings.NewReader(""), Stdout: &bytes.Buffer{}, Stderr: &bytes.Buffer{}})
							root.AddCommand(ipt)
							cmd, rest, err := root.Find(args)
							if err != nil {
								t.Fatal(err)
							}
							if err := testutil.ParseCommand(cmd, rest); err != nil {
								t.Fatalf("refused: %v", err)
							}
							readFile := func(name string) ([]byte, error) {
								if name == "/etc/resolv.conf" {
									return []byte("nameserver 10.96.0.10\n"), nil
								}
								return nil, errors.New("unexpected read of " + name)
							}
							var detected bool
							cfg, err := f.config(os.Getenv, readFile, func(dualStack bool) (bool, error) {
								detected = dualStack
								return true, nil
							})
							if err != nil {
								t.Fatal(err)
							}
							cfg.NativeNFTables = f.nativeNFT
							if _, err := redirect.Build(cfg); err != nil {
								t.Fatalf("build: %v", err)
							}
							wantMode, _ := redirect.ParseMode(mode)
							got := fmt.Sprintln(cfg.ProxyPort, cfg.InboundCapturePort, cfg.ProxyUIDs, cfg.ProxyGIDs, cfg.Mode == wantMode,
								cfg.OutboundIPRanges.All, cfg.InboundPorts.All, cfg.InboundPortsExclude, cfg.RedirectDNS, cfg.DNSServers,
								cfg.DropInvalid, detected, cfg.IPv6)
							want := fmt.Sprintln(uint16(15001), uint16(15006), []uint32{1337}, []uint32{1337}, true, true, true,
								[]uint16{15090, 15021, 15020}, true, "[10.96.0.10]", true, true, true)
							if got != want {
								t.Errorf("config %s want %s", got, want)
							}
							if optional {
								got := fmt.Sprint(cfg.OutboundPorts, cfg.OutboundPortsExclude, cfg.KubeVirtInterfaces, cfg.ExcludeInterfaces, f.logJSON)
								if want := "[3306 5432] [5555] [eth1] [eth2] true"; got != want {
									t.Errorf("optional flags: %s, want %s", got, want)
								}
							}
							if f.runValidation != cni || f.skipRuleApply != cni || f.forceApply != forceApply || f.nativeNFT != native || f.dryRun || f.cleanupOnly {
								t.Errorf("modes: validate %v, skip %v, force %v, native %v, dry run %v, cleanup %v", f.runValidation,
									f.skipRuleApply, f.forceApply, f.nativeNFT, f.dryRun, f.cleanupOnly)
							}
						})
					}
				}
			}
		}
	}
}
