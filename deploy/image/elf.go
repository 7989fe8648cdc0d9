package main

import (
	"debug/elf"
	"fmt"
)

// staticArch returns the GOARCH the ELF executable at path is built for. It fails when the binary
// asks for a dynamic loader (PT_INTERP): the image holds nothing but the binary, so a dynamic one
// would not start (`make build` builds with CGO_ENABLED=0 for this).
func staticArch(path string) (string, error) {
	f, err := elf.Open(path)
	if err != nil {
		return "", fmt.Errorf("binary %s: %w", path, err)
	}
	defer f.Close()
	if f.Type != elf.ET_EXEC && f.Type != elf.ET_DYN {
		return "", fmt.Errorf("binary %s: not an executable (%s)", path, f.Type)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return "", fmt.Errorf("binary %s: dynamically linked (PT_INTERP): build it with CGO_ENABLED=0", path)
		}
	}
	arch, ok := goarch(f.FileHeader)
	if !ok {
		return "", fmt.Errorf("binary %s: unknown machine %s (%s, %s): give -arch", path, f.Machine, f.Class, f.Data)
	}
	return arch, nil
}

// goarch names the GOARCH of an ELF header.
func goarch(h elf.FileHeader) (string, bool) {
	le := h.Data == elf.ELFDATA2LSB
	is64 := h.Class == elf.ELFCLASS64
	switch h.Machine {
	case elf.EM_X86_64:
		return "amd64", true
	case elf.EM_386:
		return "386", true
	case elf.EM_AARCH64:
		return "arm64", true
	case elf.EM_ARM:
		return "arm", true
	case elf.EM_PPC64:
		if le {
			return "ppc64le", true
		}
		return "ppc64", true
	case elf.EM_S390:
		return "s390x", is64
	case elf.EM_RISCV:
		return "riscv64", is64
	case elf.EM_LOONGARCH:
		return "loong64", is64
	case elf.EM_MIPS:
		switch {
		case is64 && le:
			return "mips64le", true
		case is64:
			return "mips64", true
		case le:
			return "mipsle", true
		}
		return "mips", true
	}
	return "", false
}
