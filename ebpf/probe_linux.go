//go:build linux && (386 || amd64 || arm || arm64 || loong64 || mips64le || mipsle || ppc64le || riscv64)

package ebpf

import (
	"errors"
	"fmt"
	"os"
	"strings"

	cebpf "github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/features"
)

// Probe checks that the running kernel has what the fast path needs: the program and map types,
// the helpers the programs call, cgroup v2 and bpffs. It returns a *MissingError naming each
// missing feature (errors.Is(err, ErrNotSupported) holds for it), or another error when probing
// itself failed (without the privilege to load programs, for one). It changes nothing.
func Probe() error {
	var missing []string
	var errs []error
	check := func(name string, err error) {
		switch {
		case err == nil:
		case errors.Is(err, cebpf.ErrNotSupported):
			missing = append(missing, name)
		default:
			errs = append(errs, fmt.Errorf("probe %s: %w", name, err))
		}
	}
	progTypes := []struct {
		name string
		t    cebpf.ProgramType
	}{
		{"program type cgroup_sock_addr", cebpf.CGroupSockAddr},
		{"program type sock_ops", cebpf.SockOps},
		{"program type sk_msg", cebpf.SkMsg},
		{"program type cgroup_sockopt", cebpf.CGroupSockopt},
	}
	for _, p := range progTypes {
		check(p.name, features.HaveProgramType(p.t))
	}
	mapTypes := []struct {
		name string
		t    cebpf.MapType
	}{
		{"map type sockhash", cebpf.SockHash},
		{"map type sk_storage", cebpf.SkStorage},
		{"map type lpm_trie", cebpf.LPMTrie},
		{"map type lru_hash", cebpf.LRUHash},
		{"map type percpu_array", cebpf.PerCPUArray},
	}
	for _, m := range mapTypes {
		check(m.name, features.HaveMapType(m.t))
	}
	helpers := []struct {
		t  cebpf.ProgramType
		fn asm.BuiltinFunc
	}{
		{cebpf.CGroupSockAddr, asm.FnGetNetnsCookie},
		{cebpf.CGroupSockAddr, asm.FnSkStorageGet},
		{cebpf.CGroupSockAddr, asm.FnSkStorageDelete},
		{cebpf.CGroupSockAddr, asm.FnGetCurrentUidGid},
		{cebpf.SockOps, asm.FnGetNetnsCookie},
		{cebpf.SockOps, asm.FnSkStorageGet},
		{cebpf.SockOps, asm.FnSockHashUpdate},
		{cebpf.SockOps, asm.FnSockOpsCbFlagsSet},
		{cebpf.SkMsg, asm.FnGetNetnsCookie},
		{cebpf.SkMsg, asm.FnMsgRedirectHash},
		{cebpf.SkMsg, asm.FnSkStorageGet},
		{cebpf.CGroupSockopt, asm.FnGetNetnsCookie},
	}
	for _, h := range helpers {
		check(fmt.Sprintf("helper %s in %s", helperName(h.fn), strings.ToLower(h.t.String())), features.HaveProgramHelper(h.t, h.fn))
	}
	mounts, err := os.ReadFile("/proc/mounts")
	if err != nil {
		errs = append(errs, err)
	} else if _, err := cgroup2Mount(mounts); err != nil {
		missing = append(missing, "cgroup v2 (no cgroup2 mount)")
	}
	if fss, err := os.ReadFile("/proc/filesystems"); err != nil {
		errs = append(errs, err)
	} else if !hasFilesystem(fss, "bpf") {
		missing = append(missing, "bpffs (no bpf file system)")
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if len(missing) > 0 {
		return &MissingError{Missing: missing}
	}
	return nil
}

// helperName returns bpf_<name> for a helper, as the kernel's documentation names it.
func helperName(fn asm.BuiltinFunc) string {
	s := strings.TrimPrefix(fn.String(), "Fn")
	var b strings.Builder
	for i, r := range s {
		if r >= 'A' && r <= 'Z' {
			if i > 0 {
				b.WriteByte('_')
			}
			r += 'a' - 'A'
		}
		b.WriteRune(r)
	}
	return "bpf_" + b.String()
}
