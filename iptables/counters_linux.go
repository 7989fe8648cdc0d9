package iptables

import (
	"context"
	"errors"
	"fmt"

	"github.com/shuntmesh/shunt/internal/netns"
	"github.com/shuntmesh/shunt/redirect"
)

// Counters returns the packet and byte counters of our rules in variant opts.Variant (required: nft or
// legacy), IPv4 then IPv6, read from the kernel inside opts.NetNS (with iptables-save -c, when
// opts.UseTools, should that fail): every rule of our chains and our rules of built-in chains, foreign
// rules left out, each with its index in the plan's chain. A family without tables of the variant is
// not read, so that reading creates none. It changes nothing.
func Counters(ctx context.Context, opts Options) ([]Counter, error) {
	v := opts.Variant
	if v != VariantNFT && v != VariantLegacy {
		return nil, fmt.Errorf("read counters: Options.Variant is %q, want %q or %q", v, VariantNFT, VariantLegacy)
	}
	var out []Counter
	err := netns.Do(opts.NetNS, func() error {
		var errs []error
		for _, f := range presentFamilies(v) {
			cs, err := familyCounters(ctx, &opts, v, f)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			out = append(out, cs...)
		}
		return errors.Join(errs...)
	})
	return out, err
}

// familyCounters reads the counters of family f in-process, or, should that fail and o.UseTools, with
// the save tool's -c.
func familyCounters(ctx context.Context, o *Options, v Variant, f redirect.Family) ([]Counter, error) {
	k, err := readKernel(v, f)
	if err == nil {
		cs, err := ownCounters(k.tables, k.counts, f)
		if err != nil {
			return nil, fmt.Errorf("%s counters: %w", f, err)
		}
		return cs, nil
	}
	if !o.UseTools {
		return nil, fmt.Errorf("read %s counters: %w", f, err)
	}
	o.logger().Warn("reading the counters in-process failed, using the save tool", "variant", string(v), "family", f.String(), "error", err.Error())
	data, err := o.runner().Run(ctx, familyTool(v, f, "save"), []string{"-c"}, nil, nil)
	if err != nil {
		return nil, fmt.Errorf("read %s counters: %w", f, err)
	}
	cs, err := parseCounters(data, f)
	if err != nil {
		return nil, fmt.Errorf("parse %s counters: %w", f, err)
	}
	return cs, nil
}

// presentFamilies lists the families, IPv4 first, in which the namespace holds tables of variant v.
func presentFamilies(v Variant) []redirect.Family {
	p4, p6 := tablesPresent(v)
	var fams []redirect.Family
	if p4 {
		fams = append(fams, redirect.IPv4)
	}
	if p6 {
		fams = append(fams, redirect.IPv6)
	}
	return fams
}
