// Command bench measures how long `shunt iptables` takes to program the default rules (the sidecar
// injector's) into a fresh pod-like network namespace, against the floor: a bare
// `iptables-VARIANT-restore --noflush` of the same rules in another fresh one. Each figure is the wall
// time of a whole process, from start to exit. It prints figures and fails only on errors.
//
//	go build -o bin/shunt ./cmd/shunt && go run ./bench -shunt bin/shunt
//
// It must run as root, on Linux, with iptables-nft and iptables-legacy installed.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"
)

// budget is the ratio shunt/floor the issue allows; istioRatio is what istio-iptables measures.
const (
	budget     = 1.5
	istioRatio = 5.8
)

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
	shunt    string   // the shunt binary
	n        int      // measured runs per variant and kind
	warmup   int      // discarded runs per variant and kind
	variants []string // iptables variants: nft, legacy
}

// result holds the wall times of one variant.
type result struct {
	variant      string
	shunt, floor []time.Duration
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var opts options
	var variants string
	fs.StringVar(&opts.shunt, "shunt", "bin/shunt", "shunt binary to measure")
	fs.IntVar(&opts.n, "n", 100, "measured runs per variant, of shunt and of the floor each")
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
	shunt, err := filepath.Abs(opts.shunt)
	if err != nil {
		return err
	}
	if _, err := os.Stat(shunt); err != nil {
		return fmt.Errorf("shunt binary (build it with `go build -o bin/shunt ./cmd/shunt`): %w", err)
	}
	opts.shunt = shunt
	fmt.Fprintf(stderr, "bench: %d warm-up + %d measured runs of shunt and of the floor per variant...\n",
		opts.warmup, opts.n)
	results, err := measure(ctx, &opts)
	if err != nil {
		return err
	}
	return printTable(stdout, &opts, results)
}

func printTable(w io.Writer, opts *options, results []result) error {
	fmt.Fprintf(w, "Programming the default rules into a fresh pod-like netns: wall time of the whole process\n")
	fmt.Fprintf(w, "shunt = %s iptables --force-iptables-binary VARIANT (native: --native-nftables)\n", opts.shunt)
	fmt.Fprintf(w, "floor = iptables-VARIANT-restore --noflush of the same rules (native: iptables-nft-restore)\n")
	fmt.Fprintf(w, "runs  = %d each (after %d warm-up), shunt and floor interleaved\n\n", opts.n, opts.warmup)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "variant\truns\tshunt median\tshunt p90\tfloor median\tfloor p90\tshunt/floor\t")
	for _, r := range results {
		sm, fm := median(r.shunt), median(r.floor)
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%.2fx\t\n", r.variant, len(r.shunt),
			ms(sm), ms(percentile(r.shunt, 90)), ms(fm), ms(percentile(r.floor, 90)), float64(sm)/float64(fm))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintf(w, "\nbudget: shunt/floor <= %.1fx (istio-iptables: about %.1fx)\n", budget, istioRatio)
	return err
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond)) }

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
