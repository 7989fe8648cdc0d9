//go:build linux && (386 || amd64 || arm || arm64 || loong64 || mips64le || mipsle || ppc64le || riscv64)

package ebpf

import (
	"errors"
	"fmt"
	"slices"

	cebpf "github.com/cilium/ebpf"
)

// AddPod registers p, or replaces what was registered under its cookie, at once: the pod's new
// lists are written under a new generation before its entry switches to it, and the old
// generation's entries are removed after. Calls for the same cookie must not run concurrently;
// calls for different pods may.
func (n *Node) AddPod(p Pod) error {
	if err := p.Validate(); err != nil {
		return fmt.Errorf("%v: %w", p, err)
	}
	if p.UserNamespaced {
		task, err := taskIDs()
		if err != nil {
			return fmt.Errorf("%v: %w", p, err)
		}
		if task {
			return fmt.Errorf("%v: the pod's network namespace belongs to a user namespace of its own (hostUsers: false), "+
				"and this kernel's programs see the node's ids of its processes, not the pod's (judging by the socket's "+
				"owner needs kernel BTF and bpf_rdonly_cast in cgroup sock_addr programs, Linux 6.7): the proxy's own "+
				"connections would be captured", p)
		}
	}
	var gen uint16 = 1
	var old redirectPod
	if err := n.maps.ShuntPods.Lookup(p.Cookie, &old); err == nil {
		gen = old.Gen + 1
		if gen == 0 {
			gen = 1
		}
	} else if !errors.Is(err, cebpf.ErrKeyNotExist) {
		return fmt.Errorf("%v: lookup: %w", p, err)
	}
	cidrs, sets := p.entries(gen)
	var written []any
	rollback := func(err error) error {
		for _, k := range written {
			switch k := k.(type) {
			case redirectCidrKey:
				_ = n.maps.ShuntCidrs.Delete(&k)
			case redirectSetKey:
				_ = n.maps.ShuntSets.Delete(&k)
			}
		}
		return fmt.Errorf("%v: %w", p, err)
	}
	one := uint8(1)
	for _, k := range cidrs {
		if err := n.maps.ShuntCidrs.Update(&k, &one, cebpf.UpdateAny); err != nil {
			return rollback(fmt.Errorf("add prefix: %w", err))
		}
		written = append(written, k)
	}
	for _, k := range sets {
		if err := n.maps.ShuntSets.Update(&k, &one, cebpf.UpdateAny); err != nil {
			return rollback(fmt.Errorf("add port or group: %w", err))
		}
		written = append(written, k)
	}
	v := p.kernel(gen)
	if err := n.maps.ShuntPods.Update(p.Cookie, &v, cebpf.UpdateAny); err != nil {
		return rollback(fmt.Errorf("add pod: %w", err))
	}
	if err := n.deleteEntries(p.Cookie, gen); err != nil {
		return fmt.Errorf("%v: remove the previous settings: %w", p, err)
	}
	n.log.Debug("pod added", "netns_cookie", p.Cookie, "generation", gen, "prefixes", len(cidrs), "set_entries", len(sets))
	return nil
}

// RemovePod unregisters the pod of the namespace cookie: its new connections are no longer
// captured (established ones keep their redirection). Removing an unknown pod is not an error.
func (n *Node) RemovePod(cookie uint64) error {
	if err := n.maps.ShuntPods.Delete(cookie); err != nil && !errors.Is(err, cebpf.ErrKeyNotExist) {
		return fmt.Errorf("remove pod netns cookie %d: %w", cookie, err)
	}
	if err := n.deleteEntries(cookie, 0); err != nil {
		return fmt.Errorf("remove pod netns cookie %d: %w", cookie, err)
	}
	return nil
}

// Pods returns the namespace cookies of the registered pods, in increasing order.
func (n *Node) Pods() ([]uint64, error) {
	var cookies []uint64
	var cookie uint64
	var pod redirectPod
	it := n.maps.ShuntPods.Iterate()
	for it.Next(&cookie, &pod) {
		cookies = append(cookies, cookie)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("list pods: %w", err)
	}
	slices.Sort(cookies)
	return slices.Compact(cookies), nil
}

// Stats returns the counters, summed over CPUs, and the number of pods registered.
func (n *Node) Stats() (Stats, error) {
	var s Stats
	fields := map[redirectStat]*uint64{
		redirectStatSTAT_CONNECT_REDIRECTED: &s.ConnectsRedirected,
		redirectStatSTAT_SOCKETS_PAIRED:     &s.SocketsPaired,
		redirectStatSTAT_MSG_REDIRECTED:     &s.MessagesRedirected,
		redirectStatSTAT_MSG_BYTES:          &s.BytesRedirected,
		redirectStatSTAT_MSG_MISS:           &s.RedirectMisses,
		redirectStatSTAT_MSG_FALLBACK:       &s.MessagesFallback,
		redirectStatSTAT_ORIGDST_ANSWERED:   &s.OrigDstAnswered,
		redirectStatSTAT_PEERNAME_ANSWERED:  &s.PeerNamesAnswered,
	}
	for idx, field := range fields {
		var perCPU []uint64
		if err := n.maps.ShuntStats.Lookup(idx, &perCPU); err != nil {
			return Stats{}, fmt.Errorf("read counter %d: %w", idx, err)
		}
		for _, v := range perCPU {
			*field += v
		}
	}
	dns := map[redirectDnsStat]*uint64{
		redirectDnsStatDNS_STAT_REDIRECTED: &s.DNSRedirected,
		redirectDnsStatDNS_STAT_ANSWERED:   &s.DNSAnswered,
	}
	for idx, field := range dns {
		var perCPU []uint64
		if err := n.maps.ShuntDnsstats.Lookup(idx, &perCPU); err != nil {
			return Stats{}, fmt.Errorf("read DNS counter %d: %w", idx, err)
		}
		for _, v := range perCPU {
			*field += v
		}
	}
	pods, err := n.Pods()
	if err != nil {
		return Stats{}, err
	}
	s.Pods = len(pods)
	return s, nil
}

// deleteEntries removes the prefix and set entries of cookie of every generation but keep (0
// keeps none).
func (n *Node) deleteEntries(cookie uint64, keep uint16) error {
	stale := func(c uint64, gen uint16) bool { return c == cookie && (keep == 0 || gen != keep) }
	return errors.Join(
		deleteKeys(n.maps.ShuntCidrs, func(k redirectCidrKey) bool { return stale(k.Cookie, k.Gen) }),
		deleteKeys(n.maps.ShuntSets, func(k redirectSetKey) bool { return stale(k.Cookie, k.Gen) }),
	)
}

// deleteKeys removes the keys of m that match. It collects them before deleting any: a key
// deleted under a walk restarts it.
func deleteKeys[K any](m *cebpf.Map, match func(K) bool) error {
	var found []K
	errs := []error{keys(m, func(k K) {
		if match(k) {
			found = append(found, k)
		}
	})}
	for _, k := range found {
		if err := m.Delete(&k); err != nil && !errors.Is(err, cebpf.ErrKeyNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// keys calls fn with every key of m. It walks with NextKey only, which every map type supports
// (the values of some, like the socket hash, cannot be read).
func keys[K any](m *cebpf.Map, fn func(K)) error {
	var k K
	var next K
	first := true
	// A key deleted under the walk restarts it from the start; the bound keeps that finite.
	for range int(m.MaxEntries())*2 + 16 {
		var err error
		if first {
			err = m.NextKey(nil, &next)
		} else {
			err = m.NextKey(&k, &next)
		}
		if errors.Is(err, cebpf.ErrKeyNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		fn(next)
		k, first = next, false
	}
	return fmt.Errorf("walk of map %v did not end", m)
}
