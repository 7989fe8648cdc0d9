package main

import (
	"fmt"
	"io"
	"text/tabwriter"
	"time"
)

// The kinds of the re-run section, in its table's order.
const (
	kindRerun     = "re-run"       // shunt-init again with the same flags: the rules are in place
	kindSave      = "save"         // a bare iptables-VARIANT-save of those rules: reading them is the least a re-run does
	kindReconcile = "reconcile"    // shunt-init --reconcile to TPROXY over the default rules
	kindFresh     = "fresh TPROXY" // shunt-init with TPROXY into an empty pod: what the reconcile installs
	kindEmptyGo   = "go-empty"     // the empty Go program in such a pod: what any Go binary costs, the re-run's floor
)

// rerunKinds are the kinds of the re-run section, in its table's order.
var rerunKinds = []string{kindRerun, kindSave, kindEmptyGo, kindReconcile, kindFresh}

func printRerun(w io.Writer, opts *options, times map[string]map[string][]time.Duration) error {
	fmt.Fprintf(w, "The init container run again, and a reconcile: wall time of the whole process, %d rounds, medians (p90)\n", opts.n)
	fmt.Fprintf(w, "re-run       = shunt-init with the injector's flags in a pod that holds its rules already\n")
	fmt.Fprintf(w, "save         = iptables-VARIANT-save in such a pod (target: re-run <= 1.0x)\n")
	fmt.Fprintf(w, "go-empty     = an empty Go program in such a pod: the least a Go binary's re-run can cost\n")
	fmt.Fprintf(w, "reconcile    = shunt-init -m TPROXY --reconcile over the default rules\n")
	fmt.Fprintf(w, "fresh TPROXY = shunt-init -m TPROXY into an empty pod (target: reconcile <= 1.1x)\n\n")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "ms\t")
	for _, k := range rerunKinds {
		fmt.Fprintf(tw, "%s\t", k)
	}
	fmt.Fprintf(tw, "re-run/save\tgo-empty/save\treconcile/fresh\t\n")
	for _, v := range opts.variants {
		t, ok := times[v]
		if !ok {
			continue
		}
		fmt.Fprintf(tw, "%s\t", v)
		for _, k := range rerunKinds {
			fmt.Fprintf(tw, "%s (%s)\t", ms(median(t[k])), ms(percentile(t[k], 90)))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t\n", ratio(median(t[kindRerun]), median(t[kindSave])),
			ratio(median(t[kindEmptyGo]), median(t[kindSave])), ratio(median(t[kindReconcile]), median(t[kindFresh])))
	}
	return tw.Flush()
}
