package agent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sys/unix"

	shuntebpf "github.com/shuntmesh/shunt/ebpf"
	"github.com/shuntmesh/shunt/internal/netns"
)

// Run loads the data path and keeps it until ctx ends.
func Run(ctx context.Context, cfg Config) error {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := shuntebpf.Probe(); err != nil {
		return err
	}
	node, err := shuntebpf.Load(shuntebpf.Options{Cgroup: cfg.Cgroup, PinDir: cfg.PinDir, Logger: log})
	if err != nil {
		return err
	}
	defer node.Close()

	collected := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "shunt_ebpf_pods_collected_total",
		Help: "Pods dropped from the data path because their network namespace was gone.",
	})
	reg := prometheus.NewRegistry()
	reg.MustRegister(&collector{node: node}, collected)

	if cfg.HealthAddr != "" {
		ln, err := net.Listen("tcp", cfg.HealthAddr)
		if err != nil {
			return fmt.Errorf("health server: %w", err)
		}
		srv := &http.Server{Handler: handler(node, reg), ReadHeaderTimeout: 5 * time.Second}
		go func() { _ = srv.Serve(ln) }()
		defer srv.Close()
		log.Info("serving /healthz, /readyz and /metrics", "addr", ln.Addr().String())
	}

	tick := time.NewTicker(cfg.GCInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			if cfg.UnloadOnStop {
				node.Close()
				if err := shuntebpf.Unload(cfg.PinDir); err != nil {
					return err
				}
				log.Info("eBPF data path unloaded")
				return nil
			}
			log.Info("stopping; the data path stays attached and pinned", "pin_dir", cfg.PinDir)
			return nil
		case <-tick.C:
			n, err := collect(node)
			if err != nil {
				log.Warn("could not list live network namespaces; no pod dropped this round", "error", err.Error())
				continue
			}
			if n > 0 {
				collected.Add(float64(n))
				log.Info("dropped pods whose network namespace is gone", "pods", n)
			}
		}
	}
}

// handler serves /healthz (the process answers), /readyz (the pinned maps answer) and /metrics.
func handler(node *shuntebpf.Node, reg *prometheus.Registry) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if _, err := node.Stats(); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	return mux
}

// collector reads the data path's counters at each scrape.
type collector struct{ node *shuntebpf.Node }

var podsDesc = prometheus.NewDesc("shunt_ebpf_pods", "Pods registered with the data path.", nil, nil)

func counterDesc(name string) *prometheus.Desc {
	return prometheus.NewDesc("shunt_ebpf_"+name+"_total", counterHelp[name], nil, nil)
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, name := range CounterNames {
		ch <- counterDesc(name)
	}
	ch <- podsDesc
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	st, err := c.node.Stats()
	if err != nil {
		ch <- prometheus.NewInvalidMetric(podsDesc, err)
		return
	}
	counters := Counters(st)
	for _, name := range CounterNames {
		ch <- prometheus.MustNewConstMetric(counterDesc(name), prometheus.CounterValue, float64(counters[name]))
	}
	ch <- prometheus.MustNewConstMetric(podsDesc, prometheus.GaugeValue, float64(st.Pods))
}

// collect drops the pods whose network namespace no longer exists and says how many it dropped.
func collect(node *shuntebpf.Node) (int, error) {
	live, err := liveNetNSCookies()
	if err != nil {
		return 0, err
	}
	pods, err := node.Pods()
	if err != nil {
		return 0, err
	}
	n := 0
	for _, c := range pods {
		if live[c] {
			continue
		}
		if err := node.RemovePod(c); err != nil {
			return n, err
		}
		n++
	}
	return n, nil
}

// liveNetNSCookies returns the cookies of every network namespace a process is in or a file in
// /run/netns or /var/run/netns holds. Processes that exit meanwhile, or that this process may not
// inspect (another user namespace's), are passed over; any other error fails it. A pod dropped by
// mistake loses only speed: its iptables rules still capture it.
func liveNetNSCookies() (map[uint64]bool, error) {
	paths, _ := filepath.Glob("/proc/[0-9]*/ns/net")
	for _, dir := range []string{"/run/netns", "/var/run/netns"} {
		entries, err := os.ReadDir(dir)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
		for _, e := range entries {
			paths = append(paths, filepath.Join(dir, e.Name()))
		}
	}
	seen := map[[2]uint64]bool{}
	live := map[uint64]bool{}
	for _, p := range paths {
		var st unix.Stat_t
		if err := unix.Stat(p, &st); err != nil {
			if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ESRCH) || errors.Is(err, unix.EACCES) || errors.Is(err, unix.EPERM) {
				continue // the process exited, or is not ours to inspect
			}
			return nil, fmt.Errorf("stat %s: %w", p, err)
		}
		key := [2]uint64{st.Dev, st.Ino}
		if seen[key] {
			continue
		}
		seen[key] = true
		c, err := shuntebpf.NetNSCookie(p)
		if err != nil {
			if _, serr := os.Stat(p); errors.Is(serr, fs.ErrNotExist) || errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) {
				continue
			}
			return nil, err
		}
		live[c] = true
	}
	return live, nil
}

// NetNSAddrs returns the global unicast addresses of the network namespace at path: a pod's own IPs.
func NetNSAddrs(path string) ([]netip.Addr, error) { return netns.GlobalAddrs(path) }
