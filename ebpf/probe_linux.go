//go:build linux && (386 || amd64 || arm || arm64 || loong64 || mips64le || mipsle || ppc64le || riscv64)

package ebpf

import (
	"errors"
	"fmt"
	"os"
	"strings"

	cebpf "github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/features"
)

// Probe checks that the running kernel has what the fast path needs: the program and map types,
// the helpers the programs call, cgroup v2 and bpffs. BTF (/sys/kernel/btf/vmlinux) and the kfunc
// bpf_rdonly_cast in cgroup sock_addr programs, with which the connect and DNS hooks read the
// socket's owner, choose the object (OwnerIDs) rather than being required. It returns a *MissingError naming each
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
		{cebpf.CGroupSockAddr, asm.FnProbeReadKernel},
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
	// Without BTF or bpf_rdonly_cast in cgroup sock_addr programs the kernel runs the redirectTask
	// object (taskIDs): nothing is missing.
	if _, err := taskIDs(); err != nil {
		errs = append(errs, err)
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

// probeOwner checks what redirect.c's sock_owner needs beyond helpers: the kernel's BTF, against
// which the programs' reads of kernel structures are relocated (CO-RE), and the kfunc
// bpf_rdonly_cast callable from a cgroup sock_addr program. It returns the name of what is
// missing, or an error when probing itself failed.
func probeOwner() (missing string, err error) {
	spec, err := btf.LoadKernelSpec()
	if errors.Is(err, cebpf.ErrNotSupported) {
		return "kernel BTF (/sys/kernel/btf/vmlinux, CONFIG_DEBUG_INFO_BTF)", nil
	}
	if err != nil {
		return "", fmt.Errorf("probe kernel BTF: %w", err)
	}
	const kfunc = "kfunc bpf_rdonly_cast in cgroup_sock_addr programs (Linux 6.7)"
	var fn *btf.Func
	var sock *btf.Struct
	if err := spec.TypeByName("bpf_rdonly_cast", &fn); errors.Is(err, btf.ErrNotFound) {
		return kfunc, nil
	} else if err != nil {
		return "", fmt.Errorf("probe %s: %w", kfunc, err)
	}
	if err := spec.TypeByName("sock", &sock); err != nil {
		return "", fmt.Errorf("probe struct sock in kernel BTF: %w", err)
	}
	fnID, err := spec.TypeID(fn)
	if err != nil {
		return "", fmt.Errorf("probe %s: %w", kfunc, err)
	}
	sockID, err := spec.TypeID(sock)
	if err != nil {
		return "", fmt.Errorf("probe struct sock in kernel BTF: %w", err)
	}
	// bpf_rdonly_cast(ctx, struct sock); return 1: the kernel BTF's ids, as the loader's
	// relocations resolve the programs' own.
	prog, err := cebpf.NewProgram(&cebpf.ProgramSpec{
		Type:       cebpf.CGroupSockAddr,
		AttachType: cebpf.AttachCGroupInet4Connect,
		License:    "Dual BSD/GPL",
		Instructions: asm.Instructions{
			asm.Mov.Imm(asm.R2, int32(sockID)),
			{OpCode: asm.OpCode(asm.JumpClass).SetJumpOp(asm.Call), Src: asm.PseudoKfuncCall, Constant: int64(fnID)},
			asm.Mov.Imm(asm.R0, 1),
			asm.Return(),
		},
	})
	var verr *cebpf.VerifierError
	switch {
	case errors.As(err, &verr):
		return kfunc, nil
	case err != nil:
		return "", fmt.Errorf("probe %s: %w", kfunc, err)
	}
	return "", prog.Close()
}
