// Command bench measures how long the init container takes to program the sidecar injector's
// default rules into a fresh pod-like network namespace: `shunt-init istio-iptables` (the init
// image's binary), `shunt istio-iptables` (the node image's) and, with -istio, Istio's own
// istio-iptables, against the floors: a bare `iptables-VARIANT-restore --noflush` of the same rules,
// and a bare `iptables-legacy-restore --noflush` of them, each in another fresh namespace. Each figure
// is the wall time of a whole process, from start to exit. It also prints shunt-init's package
// initialisation time (GODEBUG=inittrace=1) and the size of the init image's layer. It prints figures
// and fails only on errors.
//
//	make build image && go run ./bench -shunt bin/shunt -shunt-init bin/shunt-init -init-image bin/shunt-init-image.tar
//
// It must run as root, on Linux, with iptables-nft and iptables-legacy installed. Istio's binary runs
// only inside the throwaway namespaces (its --dry-run with --native-nftables programs rules anyway).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"
)

// The targets of issue 12, printed next to the figures (never asserted).
const (
	targetLegacyRatio = 1.1 // shunt-init / bare iptables-legacy-restore, every variant
	targetIstioRatio  = 15  // istio-iptables / shunt-init
	targetInitMs      = 0.3 // shunt-init's package initialisation
	targetLayerMiB    = 4   // the init image's layer, compressed
)

// injectorArgs are the arguments Istio's sidecar injector gives istio-init (after istio-iptables):
// every binary under test gets them.
var injectorArgs = []string{
	"-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "",
	"-b", "*", "-d", "15090,15021,15020", "--log_output_level=default:info",
}

// ErrNotSupported is returned on systems without network namespaces.
var ErrNotSupported = errors.New("not supported")

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench: %s\n", err)
		os.Exit(1)
	}
}

// options are the command line of bench.
type options struct {
	shunt     string   // the shunt binary
	shuntInit string   // the shunt-init binary
	istio     string   // Istio's istio-iptables or pilot-agent; empty: not measured
	goEmpty   string   // an empty Go program, built like shunt-init: the least any Go binary costs
	initImage string   // the init image's OCI layout tarball; missing: size not measured
	n         int      // measured runs per variant and kind
	warmup    int      // discarded runs per variant and kind
	variants  []string // iptables variants: nft, legacy, native
}

// The kinds of process timed, in the tables' order. floor is iptables-VARIANT-restore, legacy
// iptables-legacy-restore (for the legacy variant the floor itself).
const (
	kindShunt = "shunt"
	kindInit  = "shunt-init"
	kindIstio = "istio"
	kindFloor = "floor"
	kindLeg   = "legacy"
	kindGo    = "go-empty"
)

// result holds the wall times of one variant, per kind.
type result struct {
	variant string
	times   map[string][]time.Duration
	// istioDiffers counts the rounds in which Istio's rules differed from the floor's.
	istioDiffers int
}

// legacyTimes returns the times of the bare iptables-legacy-restore: for the legacy variant, the floor.
func (r *result) legacyTimes() []time.Duration {
	if r.variant == "legacy" {
		return r.times[kindFloor]
	}
	return r.times[kindLeg]
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var opts options
	var variants string
	fs.StringVar(&opts.shunt, "shunt", "bin/shunt", "shunt binary to measure")
	fs.StringVar(&opts.shuntInit, "shunt-init", "bin/shunt-init", "shunt-init binary to measure (the init image's)")
	fs.StringVar(&opts.istio, "istio", "", "Istio's istio-iptables (or pilot-agent, run as `pilot-agent istio-iptables`) to measure too; run only in the throwaway namespaces")
	fs.StringVar(&opts.initImage, "init-image", "bin/shunt-init-image.tar", "the init image's OCI layout tarball (make image), for its layer size; skipped when missing")
	fs.IntVar(&opts.n, "n", 100, "measured runs per variant, of each binary and floor")
	fs.IntVar(&opts.warmup, "warmup", 2, "warm-up runs per variant, discarded")
	fs.StringVar(&variants, "variants", "nft,legacy,native", "comma list of variants: nft, legacy (iptables), native (--native-nftables)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	if opts.n < 1 || opts.warmup < 0 {
		return errors.New("-n must be at least 1 and -warmup at least 0")
	}
	for _, v := range strings.Split(variants, ",") {
		if v = strings.TrimSpace(v); v != "nft" && v != "legacy" && v != "native" {
			return fmt.Errorf("-variants: %q: want nft, legacy or native", v)
		}
		opts.variants = append(opts.variants, v)
	}
	if os.Geteuid() != 0 {
		return errors.New("must run as root: it creates network namespaces and programs iptables in them")
	}
	for _, b := range []struct {
		path  *string
		flag  string
		build string
	}{
		{&opts.shunt, "-shunt", "make build"},
		{&opts.shuntInit, "-shunt-init", "make build"},
		{&opts.istio, "-istio", ""},
	} {
		if *b.path == "" {
			continue
		}
		abs, err := filepath.Abs(*b.path)
		if err != nil {
			return err
		}
		if _, err := os.Stat(abs); err != nil {
			if b.build != "" {
				return fmt.Errorf("%s (build it with `%s`): %w", b.flag, b.build, err)
			}
			return fmt.Errorf("%s: %w", b.flag, err)
		}
		*b.path = abs
	}
	dir, err := os.MkdirTemp("", "shunt-bench-go-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	if opts.goEmpty, err = buildEmptyGo(ctx, dir); err != nil {
		return err
	}
	fmt.Fprintf(stderr, "bench: %d warm-up + %d measured rounds per variant...\n", opts.warmup, opts.n)
	results, err := measure(ctx, &opts)
	if err != nil {
		return err
	}
	if err := printTimes(stdout, &opts, results); err != nil {
		return err
	}
	fmt.Fprintln(stdout)
	rerun, err := measureRerun(ctx, &opts)
	if err != nil {
		return err
	}
	if err := printRerun(stdout, &opts, rerun); err != nil {
		return err
	}
	fmt.Fprintln(stdout)
	if err := printInit(ctx, stdout, &opts); err != nil {
		return err
	}
	fmt.Fprintln(stdout)
	return printImage(stdout, &opts)
}

// buildEmptyGo builds, in dir, a Go program that does nothing, with the toolchain and flags of
// `make build` for shunt-init: its time is the floor of any Go binary's process, which no work in main
// can go below.
func buildEmptyGo(ctx context.Context, dir string) (string, error) {
	src := filepath.Join(dir, "main.go")
	if err := os.WriteFile(src, []byte("package main\n\nfunc main() {}\n"), 0o600); err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "go-empty")
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags=-s -w", "-o", bin, src)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build the empty Go program: %w: %s", err, out)
	}
	return bin, nil
}

// binaryArgs returns the command line of a binary under test (shunt, shunt-init, Istio's) for
// variant, as the injector starts it: istio-iptables, then the variant's flag, then injectorArgs. A
// standalone istio-iptables takes no subcommand; pilot-agent and shunt do.
func binaryArgs(path, variant string) []string {
	var args []string
	if base := filepath.Base(path); base != "istio-iptables" {
		args = append(args, "istio-iptables")
	}
	if variant == "native" {
		args = append(args, "--native-nftables")
	} else {
		args = append(args, "--force-iptables-binary", variant)
	}
	return append(args, injectorArgs...)
}

func printTimes(w io.Writer, opts *options, results []result) error {
	kinds := []string{kindShunt, kindInit}
	if opts.istio != "" {
		kinds = append(kinds, kindIstio)
	}
	kinds = append(kinds, kindFloor, kindLeg, kindGo)
	fmt.Fprintf(w, "Programming the injector's default rules into a fresh pod-like netns: wall time of the whole process\n")
	fmt.Fprintf(w, "shunt      = %s %s\n", opts.shunt, strings.Join(quoted(binaryArgs(opts.shunt, "VARIANT")), " "))
	fmt.Fprintf(w, "shunt-init = %s istio-iptables ... (the same)\n", opts.shuntInit)
	if opts.istio != "" {
		fmt.Fprintf(w, "istio      = %s %s\n", opts.istio, strings.Join(quoted(binaryArgs(opts.istio, "VARIANT")), " "))
	}
	fmt.Fprintf(w, "             VARIANT: --force-iptables-binary nft|legacy, or --native-nftables\n")
	fmt.Fprintf(w, "floor      = iptables-VARIANT-restore --noflush of the same rules (native: iptables-nft-restore)\n")
	fmt.Fprintf(w, "legacy     = iptables-legacy-restore --noflush of the same rules (legacy: the floor)\n")
	fmt.Fprintf(w, "go-empty   = an empty Go program (func main() {}), built as shunt-init is: what any Go binary costs\n")
	fmt.Fprintf(w, "runs       = %d each (after %d warm-up), interleaved, in rotating order\n\n", opts.n, opts.warmup)

	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "ms: median (p90)\t%s\t\n", strings.Join(kinds, "\t"))
	for _, r := range results {
		fmt.Fprintf(tw, "%s\t", r.variant)
		for _, k := range kinds {
			ds := r.times[k]
			if k == kindLeg {
				ds = r.legacyTimes()
			}
			fmt.Fprintf(tw, "%s (%s)\t", ms(median(ds)), ms(percentile(ds, 90)))
		}
		fmt.Fprintln(tw)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w)

	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	header := "ratio of medians\tinit/legacy\tinit/floor\tshunt/legacy\tshunt/floor\tgo-empty/legacy\t"
	if opts.istio != "" {
		header += "istio/init\t"
	}
	fmt.Fprintln(tw, header)
	for _, r := range results {
		in, sh := median(r.times[kindInit]), median(r.times[kindShunt])
		fl, lg := median(r.times[kindFloor]), median(r.legacyTimes())
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t", r.variant, ratio(in, lg), ratio(in, fl), ratio(sh, lg), ratio(sh, fl),
			ratio(median(r.times[kindGo]), lg))
		if opts.istio != "" {
			fmt.Fprintf(tw, "%s\t", ratio(median(r.times[kindIstio]), in))
		}
		fmt.Fprintln(tw)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(w, "\ntargets: shunt-init/legacy <= %.1fx for every variant", targetLegacyRatio)
	if opts.istio != "" {
		fmt.Fprintf(w, "; istio/shunt-init >= %dx", targetIstioRatio)
	}
	fmt.Fprintln(w)
	for _, r := range results {
		if r.istioDiffers > 0 {
			fmt.Fprintf(w, "note: %s: Istio's rules differed from the floor's in %d of %d rounds\n",
				r.variant, r.istioDiffers, len(r.times[kindIstio]))
		}
	}
	return nil
}

// quoted returns args with the empty ones and those holding * quoted, as a shell needs them.
func quoted(args []string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		out[i] = a
		if a == "" || strings.Contains(a, "*") {
			out[i] = "'" + a + "'"
		}
	}
	return out
}

func ratio(a, b time.Duration) string {
	if b == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2fx", float64(a)/float64(b))
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f", float64(d)/float64(time.Millisecond)) }

// median returns the median of ds: the mean of the middle two when their number is even.
func median(ds []time.Duration) time.Duration {
	s := slices.Sorted(slices.Values(ds))
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// percentile returns the nearest-rank p-th percentile of ds.
func percentile(ds []time.Duration, p float64) time.Duration {
	s := slices.Sorted(slices.Values(ds))
	if len(s) == 0 {
		return 0
	}
	i := int(math.Ceil(p/100*float64(len(s)))) - 1
	return s[max(i, 0)]
}
