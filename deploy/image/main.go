// Command image writes a container image of shunt (`make image`): an OCI image layout tarball whose
// only layer holds one static binary, as /shunt (the node image) or /shunt-init (the init image,
// -file shunt-init), its entrypoint. It needs no container engine and is reproducible: the same
// binary, flags and SOURCE_DATE_EPOCH give a byte-identical tarball. It is a build tool, not shipped.
//
//	go run ./deploy/image -binary bin/shunt -o bin/shunt-image.tar -name ghcr.io/shuntmesh/shunt -tag v0.1.0
//	go run ./deploy/image -binary bin/shunt-init -file shunt-init -o bin/shunt-init-image.tar \
//		-name ghcr.io/shuntmesh/shunt-init -tag v0.1.0
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
)

func main() {
	if err := run(os.Args[1:], os.Getenv, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintf(os.Stderr, "image: %v\n", err)
		os.Exit(1)
	}
}

// run builds the image the command line args describe; getenv reads SOURCE_DATE_EPOCH.
func run(args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("image", flag.ContinueOnError)
	fs.SetOutput(stderr)
	binary := fs.String("binary", "", "the static shunt binary (required)")
	file := fs.String("file", "shunt", "the binary's name in the image's root, its entrypoint /FILE; also label org.opencontainers.image.title")
	out := fs.String("o", "", "the OCI image layout tarball to write (required)")
	repo := fs.String("name", "ghcr.io/shuntmesh/shunt", "the image's repository, recorded in index.json")
	tag := fs.String("tag", "latest", "the image's tag, recorded in index.json")
	version := fs.String("version", "", "label org.opencontainers.image.version (default: the tag)")
	revision := fs.String("revision", "", "label org.opencontainers.image.revision: the source commit")
	source := fs.String("source", "https://github.com/shuntmesh/shunt", "label org.opencontainers.image.source")
	var extras []string
	fs.Func("extra", "another static binary put in the image's root under its file name (repeatable)", func(v string) error {
		extras = append(extras, v)
		return nil
	})
	arch := fs.String("arch", "", "the image's architecture as GOARCH (default: the binary's, from its ELF header)")
	variant := fs.String("variant", "", "the platform variant, e.g. v7 for GOARM=7 (optional)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	var errs []error
	if *binary == "" {
		errs = append(errs, errors.New("-binary is required"))
	}
	if *out == "" {
		errs = append(errs, errors.New("-o is required"))
	}
	if !validFile(*file) {
		errs = append(errs, fmt.Errorf("-file %q: want a plain file name such as shunt", *file))
	}
	ref, err := name.NewTag(*repo+":"+*tag, name.StrictValidation)
	if err != nil {
		errs = append(errs, fmt.Errorf("-name %q -tag %q: %w", *repo, *tag, err))
	}
	created, err := sourceDateEpoch(getenv("SOURCE_DATE_EPOCH"))
	if err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}

	binArch, err := staticArch(*binary)
	if err != nil {
		return err
	}
	if *arch == "" {
		*arch = binArch
	} else if *arch != binArch {
		return fmt.Errorf("-arch %s, but %s is built for %s", *arch, *binary, binArch)
	}
	data, err := os.ReadFile(*binary)
	if err != nil {
		return err
	}
	var extra []extraFile
	for _, path := range extras {
		if a, err := staticArch(path); err != nil {
			return fmt.Errorf("-extra %s: %w", path, err)
		} else if a != *arch {
			return fmt.Errorf("-extra %s is built for %s, the image for %s", path, a, *arch)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return fmt.Errorf("-extra %s: %w", path, err)
		}
		extra = append(extra, extraFile{Name: filepath.Base(path), Data: b})
	}
	if *version == "" {
		*version = ref.TagStr()
	}
	img, err := build(spec{
		Binary:  data,
		File:    *file,
		Extra:   extra,
		Ref:     ref.String(),
		Arch:    *arch,
		Variant: *variant,
		Created: created,
		Labels: map[string]string{
			"org.opencontainers.image.title":    *file,
			"org.opencontainers.image.source":   *source,
			"org.opencontainers.image.version":  *version,
			"org.opencontainers.image.revision": *revision,
		},
	})
	if err != nil {
		return err
	}
	size, err := writeFileAtomic(*out, img.writeLayout)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s: %s linux/%s, /%s\n", *out, ref, platformArch(*arch, *variant), *file)
	fmt.Fprintf(stdout, "  manifest %s\n", img.Digest)
	fmt.Fprintf(stdout, "  layer    %s: %s compressed, %s uncompressed (binary %s)\n",
		img.LayerDigest, formatSize(img.LayerSize), formatSize(img.LayerUncompressedSize), formatSize(int64(len(data))))
	fmt.Fprintf(stdout, "  tarball  %s\n", formatSize(size))
	return nil
}

// sourceDateEpoch returns the time SOURCE_DATE_EPOCH (seconds since 1970, UTC) names; empty is 0.
func sourceDateEpoch(s string) (time.Time, error) {
	if s == "" {
		return time.Unix(0, 0).UTC(), nil
	}
	sec, err := strconv.ParseInt(s, 10, 64)
	if err != nil || sec < 0 {
		return time.Time{}, fmt.Errorf("SOURCE_DATE_EPOCH %q: not a non-negative number of seconds", s)
	}
	return time.Unix(sec, 0).UTC(), nil
}

// writeFileAtomic writes path through write, to a temporary file renamed into place, so a reader
// never sees a partial tarball; it returns the size written.
func writeFileAtomic(path string, write func(io.Writer) error) (int64, error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return 0, err
	}
	defer os.Remove(f.Name()) // fails harmlessly after the rename
	werr := write(f)
	size, serr := f.Seek(0, io.SeekCurrent)
	if err := errors.Join(werr, serr, f.Chmod(0o644), f.Close()); err != nil {
		return 0, fmt.Errorf("write %s: %w", path, err)
	}
	return size, os.Rename(f.Name(), path)
}

// formatSize prints n bytes in MiB with the exact count.
func formatSize(n int64) string {
	return fmt.Sprintf("%.2f MiB (%d bytes)", float64(n)/(1<<20), n)
}

func platformArch(arch, variant string) string {
	return strings.TrimSuffix(arch+"/"+variant, "/")
}
