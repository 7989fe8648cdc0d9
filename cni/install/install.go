// Package install is shunt's node installer, the container of the CNI DaemonSet: it installs the
// shunt binary as the CNI plugin shunt-cni, chains it at the end of the primary network's conflist,
// writes the plugin's kubeconfig, and keeps all three in place until it is stopped, when it takes
// them away again, leaving the conflist as it found it. It serves health, readiness and metrics (from
// the plugin's reports), removes the node's startup taint once the plugin is ready, and repairs pods
// that started without capture rules.
package install

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"

	"github.com/shuntmesh/shunt/backend"
	"github.com/shuntmesh/shunt/cni"
	"github.com/shuntmesh/shunt/cni/podstate"
	"github.com/shuntmesh/shunt/redirect"
)

// Defaults of Config.
const (
	DefaultBinDir          = "/host/opt/cni/bin"
	DefaultNetDir          = "/host/etc/cni/net.d"
	DefaultKubeconfigName  = "shunt-kubeconfig"
	DefaultTokenFile       = "/var/run/secrets/kubernetes.io/serviceaccount/token"
	DefaultCAFile          = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
	DefaultHealthAddr      = ":9102"
	DefaultDebounce        = 100 * time.Millisecond
	DefaultResync          = time.Minute
	DefaultRetry           = 2 * time.Second
	DefaultFightWindow     = 30 * time.Second
	DefaultFightThreshold  = 3
	DefaultFightBackoff    = time.Second
	DefaultFightBackoffMax = 5 * time.Minute
	binaryMode             = 0o755
	kubeconfigMode         = 0o600
	defaultNetConfigMode   = 0o644
	verifyTimeout          = 10 * time.Second
	shutdownTimeout        = 5 * time.Second
	reportBufferSize       = 64 << 10
)

// Config configures the installer. Paths are as the installer sees them; Entry holds the paths the
// plugin, on the host, sees.
type Config struct {
	// Binary is the plugin that does the whole work in a process of its own; empty means the running
	// executable. With a Shim it is installed as shim.StandaloneName, which the shim runs when the agent
	// cannot; without one it is installed as the plugin (cni.PluginType).
	Binary string
	// Shim is the small plugin binary (cmd/shunt-cni) installed as the plugin, which hands commands to
	// the agent (ServeCNI). Empty means shim.DefaultName beside Binary when that file exists, else none.
	Shim string
	// ServeCNI runs the shim's commands in the agent's process (POST /v1/cni on AgentSocket), when the
	// agent holds the capabilities they need (NET_ADMIN, SYS_ADMIN); otherwise the agent answers that
	// it does not run them and the shim runs the standalone plugin.
	ServeCNI bool
	// BinDir is the host's CNI bin directory, NetDir its CNI config directory.
	BinDir, NetDir string
	// KubeconfigFile is where the plugin's kubeconfig is written; empty means NetDir/shunt-kubeconfig.
	// Entry.Kubeconfig is the same file as the host sees it.
	KubeconfigFile string
	// TokenFile and CAFile are the service-account token and cluster CA put in the kubeconfig (CAFile
	// may be empty: no CA); APIServer is its server URL.
	TokenFile, CAFile, APIServer string
	// Entry is the plugin's conflist entry.
	Entry Entry
	// ReportSocket is the datagram socket the installer reads the plugin's reports from; empty means
	// none. Entry.ReportSocket is the same socket as the host sees it.
	ReportSocket string
	// AgentSocket is the node agent's socket, as mounted: the plugin asks it for the pods it sets up
	// (answered from one watch of the node's pods) before it reads them from the API server itself.
	// Empty means no agent; it needs Client. Entry.AgentSocket is the same socket as the host sees it.
	AgentSocket string
	// HealthAddr is the address of /healthz, /readyz and /metrics; empty means no server (see Handler).
	HealthAddr string

	// Client reaches the API server; nil disables taint removal and repair.
	Client dynamic.Interface
	// NodeName is this node.
	NodeName string
	// TaintKey is the NoSchedule taint removed from the node once the plugin is ready; empty means
	// DefaultTaintKey.
	TaintKey string
	// Repair configures the repair loop; a zero Mode means RepairDelete.
	Repair RepairConfig
	// MigratePods moves every pod the plugin recorded in Entry.StateDir (as mounted here: the same
	// path) to the backend new pods get, once the plugin is ready: a changed backend setting then
	// reaches the running pods, with no capture gap (see cni/podstate.MigrateAll).
	MigratePods bool
	// Audit checks the recorded pods' rules every Audit.Interval (0: no audit) and repairs drift.
	Audit AuditConfig

	// Debounce gathers file events before acting; Resync checks everything regardless of events;
	// Retry is the pause after a failed step.
	Debounce, Resync, Retry time.Duration
	// When another agent drops our entry FightThreshold times in a row, each time within FightWindow of
	// our putting it back, the installer waits FightBackoff before putting it back, doubling up to
	// FightBackoffMax.
	FightWindow                   time.Duration
	FightThreshold                int
	FightBackoff, FightBackoffMax time.Duration

	// Logger receives the installer's log; nil discards it.
	Logger *slog.Logger
}

// Installer installs the plugin and keeps it installed; see Run.
type Installer struct {
	cfg     Config
	log     *slog.Logger
	metrics *metrics
	entry   []byte       // our conflist entry, compact
	binPath string       // the plugin runtimes execute (cni.PluginType)
	bins    []installBin // what is installed in BinDir, the plugin last
	// serveCNI is why the agent does not run the shim's commands, or "" when it does.
	notServing string
	repair     *repairer
	pods       *nodePods // the one watch of the node's pods, for the agent's socket and the repair loop
	audit      *auditor  // nil: no drift audit
	// unrecorded repairs the meshed pods that started without the plugin; nil: not done.
	unrecorded *unrecorded
	// firstReady is closed when the plugin is first installed and verified, at readyAt.
	firstReady chan struct{}
	readyAt    time.Time

	// Owned by Run's goroutine.
	binVerified bool
	st          *installState
	fight       fightState
	logged      map[string]string // last message per step, to log changes only
	readyOnce   bool
	wasReady    bool

	wg     sync.WaitGroup // Run's goroutines
	mu     sync.Mutex
	status status

	// step, when set, is called after each step of a change to the CNI config that a crash could
	// interrupt; its error stops the change there, as a crash would. For tests.
	step func(name string) error
}

// New checks cfg, fills its defaults and reads the binary to install.
func New(cfg Config) (*Installer, error) {
	if (cfg.MigratePods || cfg.Audit.Interval > 0) && cfg.Entry.StateDir == "" {
		return nil, errors.New("migrating and auditing the node's pods need the plugin's state directory (Entry.StateDir)")
	}
	switch cfg.Audit.Repair {
	case "", DriftReconcile, DriftLabel, DriftDelete, DriftOff:
	default:
		return nil, fmt.Errorf("drift repair %q: want reconcile, label, delete or off", cfg.Audit.Repair)
	}
	if cfg.Binary == "" {
		exe, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("binary to install: %w", err)
		}
		cfg.Binary = exe
	}
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	defDur := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&cfg.BinDir, DefaultBinDir)
	def(&cfg.NetDir, DefaultNetDir)
	def(&cfg.KubeconfigFile, filepath.Join(cfg.NetDir, DefaultKubeconfigName))
	def(&cfg.TaintKey, DefaultTaintKey)
	def(&cfg.Repair.Mode, RepairDelete)
	def(&cfg.Repair.LabelKey, DefaultRepairLabelKey)
	def(&cfg.Repair.InitContainer, DefaultRepairInitContainer)
	defDur(&cfg.Repair.Grace, DefaultRepairGrace)
	if cfg.Repair.ExitCode == 0 {
		cfg.Repair.ExitCode = DefaultRepairExitCode
	}
	defDur(&cfg.Debounce, DefaultDebounce)
	defDur(&cfg.Resync, DefaultResync)
	defDur(&cfg.Retry, DefaultRetry)
	defDur(&cfg.FightWindow, DefaultFightWindow)
	defDur(&cfg.FightBackoff, DefaultFightBackoff)
	defDur(&cfg.FightBackoffMax, DefaultFightBackoffMax)
	if cfg.FightThreshold == 0 {
		cfg.FightThreshold = DefaultFightThreshold
	}

	var errs []error
	bad := func(field, value string, err error) {
		errs = append(errs, &redirect.FieldError{Field: field, Value: value, Err: err})
	}
	if cfg.APIServer == "" {
		bad("APIServer", "", errors.New("required: the API server the plugin reads pods from"))
	}
	if cfg.TokenFile == "" {
		bad("TokenFile", "", errors.New("required"))
	}
	switch cfg.Repair.Mode {
	case RepairDelete, RepairLabel, RepairOff:
	default:
		bad("Repair.Mode", cfg.Repair.Mode, errors.New("must be delete, label or off"))
	}
	if cfg.Client != nil && cfg.NodeName == "" {
		bad("NodeName", "", errors.New("required with an API client"))
	}
	if cfg.AgentSocket != "" && cfg.Client == nil {
		bad("AgentSocket", cfg.AgentSocket, errors.New("the agent needs an API client"))
	}
	if cfg.FightThreshold < 1 {
		bad("FightThreshold", fmt.Sprint(cfg.FightThreshold), errors.New("must be at least 1"))
	}
	if cfg.FightBackoffMax < cfg.FightBackoff {
		bad("FightBackoffMax", cfg.FightBackoffMax.String(), errors.New("must be at least FightBackoff"))
	}
	entry, err := cfg.Entry.JSON()
	if err != nil {
		errs = append(errs, err)
	} else if _, err := cni.ParseNetConf(entry); err != nil {
		errs = append(errs, fmt.Errorf("plugin entry: %w", err))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	bins, err := binariesToInstall(&cfg)
	if err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	in := &Installer{
		cfg:     cfg,
		log:     log,
		metrics: newMetrics(),
		entry:   entry,
		binPath: filepath.Join(cfg.BinDir, cni.PluginType),
		bins:    bins,
		logged:  make(map[string]string),

		firstReady: make(chan struct{}),
	}
	if cfg.Client != nil && (cfg.AgentSocket != "" || cfg.Repair.Mode != RepairOff) {
		in.pods = newNodePods(cfg.Client, cfg.NodeName, log, in.metrics)
	}
	switch {
	case !cfg.ServeCNI:
		in.notServing = "not enabled (--serve-cni=false)"
	case len(bins) < 2:
		in.notServing = "no shim installed"
	default:
		in.notServing = whyNotServing()
	}
	if cfg.Client != nil && cfg.Repair.Mode != RepairOff {
		in.repair = newRepairer(cfg.Client, cfg.NodeName, cfg.Repair, log, in.metrics)
		in.repair.pods = in.pods
		if cfg.Entry.StateDir != "" {
			in.unrecorded = &unrecorded{store: podstate.Store{Dir: cfg.Entry.StateDir}, exclude: cfg.Entry.ExcludeNamespaces,
				repair: in.repair, log: log, metrics: in.metrics,
				unknown: make(map[types.UID]bool), notCaptured: make(map[types.UID]string)}
			in.repair.unrecorded = in.unrecorded
		}
	}
	if cfg.Audit.Interval > 0 {
		in.audit = &auditor{store: podstate.Store{Dir: cfg.Entry.StateDir}, cfg: cfg.Audit, client: cfg.Client, node: cfg.NodeName,
			log: log, metrics: in.metrics, reported: make(map[string]string)}
		if cfg.Client != nil && (cfg.Audit.Repair == DriftLabel || cfg.Audit.Repair == DriftDelete) {
			rc := cfg.Repair
			rc.Mode = cfg.Audit.Repair
			in.audit.repair = newRepairer(cfg.Client, cfg.NodeName, rc, log, in.metrics)
		}
		if in.unrecorded != nil {
			in.audit.notCaptured = in.unrecorded.pods
		}
	}
	return in, nil
}

// dirty says what a reconcile must look at.
type dirty uint8

const (
	dirtyBinary dirty = 1 << iota // the installed binary
	dirtyFiles                    // the conflist and the kubeconfig
	dirtyAll    = dirtyBinary | dirtyFiles
)

// Run installs the plugin and keeps it installed until ctx is done, then uninstalls it: the conflist
// restored, the binary and the kubeconfig removed, the report socket closed. It returns nil after a
// clean uninstall; an error when it could not start or not uninstall.
func (in *Installer) Run(ctx context.Context) error {
	for _, dir := range []string{in.cfg.NetDir, in.cfg.BinDir, filepath.Dir(in.cfg.KubeconfigFile)} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		// A killed run may have left temporary files; runtimes ignore them, so one that cannot go
		// does not stop the install.
		removed, err := removeStaleTemps(dir)
		for _, f := range removed {
			in.log.Info("removed a temporary file left by a killed run", "file", f)
		}
		if err != nil {
			in.log.Warn("remove temporary files left by a killed run", "dir", dir, "error", err)
		}
	}
	// The node's decision, once: it depends on the configuration and the kernel only.
	choice := backend.ForNewPods(backend.Settings{NativeNFTables: in.cfg.Entry.Backend == cni.BackendNFTables,
		IptablesVariant: in.cfg.Entry.IptablesVariant})
	in.log.Info("new pods get their rules from this backend", "backend", choice.Backend, "reason", choice.Reason)
	in.metrics.backend.WithLabelValues(choice.Backend, choice.Reason).Set(1)
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watch files: %w", err)
	}
	defer w.Close()
	if err := in.addWatches(w); err != nil {
		return err
	}

	ctx, cancel := context.WithCancel(ctx)
	defer in.wg.Wait()
	defer cancel()

	var srv *http.Server
	if in.cfg.HealthAddr != "" {
		ln, err := net.Listen("tcp", in.cfg.HealthAddr)
		if err != nil {
			return fmt.Errorf("health server: %w", err)
		}
		srv = &http.Server{Handler: in.Handler(), ReadHeaderTimeout: 10 * time.Second}
		in.wg.Go(func() { _ = srv.Serve(ln) })
		in.log.Info("serving /healthz, /readyz and /metrics", "addr", ln.Addr().String())
	}
	if in.pods != nil {
		in.wg.Go(func() { in.pods.run(ctx) })
	}
	var agent *http.Server
	if in.cfg.AgentSocket != "" {
		ln, err := listenAgent(in.cfg.AgentSocket)
		if err != nil {
			return errors.Join(err, shutdown(srv))
		}
		agent = &http.Server{Handler: in.agentHandler(), ReadHeaderTimeout: 10 * time.Second}
		in.wg.Go(func() { _ = agent.Serve(ln) })
		in.log.Info("serving the node's pods to the plugin", "socket", in.cfg.AgentSocket, "node", in.cfg.NodeName)
		if in.notServing != "" {
			in.log.Info("the shim's commands run in the standalone plugin", "reason", in.notServing)
		} else {
			in.log.Info("running the shim's commands in the agent", "socket", in.cfg.AgentSocket)
		}
	}
	var reports *net.UnixConn
	if in.cfg.ReportSocket != "" {
		if reports, err = listenReports(in.cfg.ReportSocket); err != nil {
			return errors.Join(err, shutdown(agent), shutdown(srv))
		}
		in.wg.Go(func() { in.readReports(reports) })
		in.log.Info("listening for plugin reports", "socket", in.cfg.ReportSocket)
	}
	in.wg.Go(func() { in.podsLoop(ctx) })
	if in.cfg.Entry.StateDir != "" {
		in.wg.Go(func() { in.afterReady(ctx) })
	}
	if in.repair != nil {
		in.wg.Go(func() { in.repair.run(ctx) })
		in.log.Info("repairing pods started without capture rules", "node", in.cfg.NodeName, "mode", in.cfg.Repair.Mode)
	}

	in.loop(ctx, w)

	in.setStatus(func(s *status) { s.stopping = true })
	in.metrics.ready.Set(0)
	in.log.Info("stopping: uninstalling shunt-cni")
	errs := []error{in.uninstall()}
	if reports != nil {
		reports.Close()
		if err := os.Remove(in.cfg.ReportSocket); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	// The socket goes with the agent: the plugin finds none and reads pods from the API server itself.
	errs = append(errs, shutdown(agent), shutdown(srv))
	if err := errors.Join(errs...); err != nil {
		return err
	}
	in.log.Info("uninstalled shunt-cni")
	return nil
}

// afterReady, once the plugin is first ready, marks the state directory (the plugin records every pod
// it captures from now on) and repairs the meshed pods that started without it.
func (in *Installer) afterReady(ctx context.Context) {
	select {
	case <-ctx.Done():
		return
	case <-in.firstReady:
	}
	if in.unrecorded == nil {
		store := podstate.Store{Dir: in.cfg.Entry.StateDir}
		if _, err := store.MarkRecording(in.readyAt); err != nil {
			in.log.Warn("mark the state directory", "state_dir", store.Dir, "error", err)
		}
		return
	}
	in.log.Info("repairing meshed pods that started without the plugin", "node", in.cfg.NodeName,
		"mode", in.cfg.Repair.Mode, "grace", in.cfg.Repair.Grace)
	in.unrecorded.start(ctx, in.readyAt, in.cfg.Repair.Grace, in.pods)
}

func shutdown(srv *http.Server) error {
	if srv == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	return srv.Shutdown(ctx)
}

// reconcile puts back what is missing of what d covers. It returns what to look at again and when.
func (in *Installer) reconcile(ctx context.Context, d dirty) (dirty, time.Duration) {
	var again dirty
	var retry time.Duration
	later := func(what dirty, after time.Duration) {
		again |= what
		if retry == 0 || after < retry {
			retry = after
		}
	}
	if d&dirtyBinary != 0 {
		ok, err := in.ensureBinary(ctx)
		in.setStatus(func(s *status) { s.binOK = ok })
		if in.note("binary", err) {
			in.log.Error("install plugin binary", "file", in.binPath, "error", err)
		}
		if err != nil {
			later(dirtyBinary, in.cfg.Retry)
		}
	}
	if d&dirtyFiles != 0 {
		err := in.ensureKubeconfig()
		in.setStatus(func(s *status) { s.kubeOK = err == nil })
		if in.note("kubeconfig", err) {
			in.log.Error("write kubeconfig", "file", in.cfg.KubeconfigFile, "error", err)
		}
		if err != nil {
			later(dirtyFiles, in.cfg.Retry)
		}
		in.mu.Lock()
		prereq := in.status.binOK && in.status.kubeOK
		in.mu.Unlock()
		if !prereq {
			// An entry without a working plugin would fail every pod on the node.
			in.setStatus(func(s *status) {
				s.entryOK, s.entryWhy = false, "our entry waits for the plugin binary and its kubeconfig"
			})
			later(dirtyFiles, in.cfg.Retry)
			return again, retry
		}
		wait, err := in.ensureEntry()
		if in.note("entry", err) {
			in.log.Error("install conflist entry", "dir", in.cfg.NetDir, "error", err)
		}
		switch {
		case err != nil:
			later(dirtyFiles, in.cfg.Retry)
		case wait > 0:
			later(dirtyFiles, wait)
		}
	}
	return again, retry
}

// note records the outcome of a step and reports whether err is news worth logging.
func (in *Installer) note(step string, err error) bool {
	msg := ""
	if err != nil {
		msg = err.Error()
	}
	news := msg != "" && msg != in.logged[step]
	in.logged[step] = msg
	return news
}

// uninstall takes our entry out of the CNI config, removes the binary and the kubeconfig.
func (in *Installer) uninstall() error {
	var errs []error
	path := ""
	if in.st != nil {
		path = in.st.path
	} else if p, err := primaryConfig(in.cfg.NetDir); err == nil {
		// Nothing written by this run; an earlier one may have left an entry, in the primary config
		// or in a conflist made of it (killed before it removed the original, or while restoring it).
		path = p.path
		if !p.isList() {
			path = strings.TrimSuffix(p.path, filepath.Ext(p.path)) + ".conflist"
		}
	}
	if path != "" {
		if err := in.restore(path); err != nil {
			errs = append(errs, fmt.Errorf("restore CNI config: %w", err))
		}
		in.st = nil
	}
	files := []string{in.cfg.KubeconfigFile}
	for _, b := range in.bins {
		files = append(files, b.dst)
	}
	for _, f := range files {
		if err := os.Remove(f); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
