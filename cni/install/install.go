// Package install is shunt's node installer, the container of the CNI DaemonSet: it installs the
// shunt binary as the CNI plugin shunt-cni, chains it at the end of the primary network's conflist,
// writes the plugin's kubeconfig, and keeps all three in place until it is stopped, when it takes
// them away again, leaving the conflist as it found it. It serves health, readiness and metrics (from
// the plugin's reports), removes the node's startup taint once the plugin is ready, and repairs pods
// that started without capture rules.
package install

import (
	"bytes"
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

	"github.com/containernetworking/cni/libcni"
	"github.com/fsnotify/fsnotify"
	"k8s.io/client-go/dynamic"

	"github.com/shuntmesh/shunt/cni"
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
	// Binary is installed as the plugin; empty means the running executable.
	Binary string
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
	entry   []byte // our conflist entry, compact
	binPath string
	src     fileDigest
	repair  *repairer

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

// Steps of a config change, passed to Installer.step.
const (
	stepConflistWritten = "conflist written"  // the config with our entry (a new conflist) in place
	stepOriginalRemoved = "original removed"  // the lone plugin config turned into that conflist removed
	stepOriginalWritten = "original restored" // uninstall: the lone plugin config back, our conflist not yet removed
)

// installState is what Run did to the primary network's config. Nothing in it is needed to undo that:
// uninstalling works from the files alone (see restore), so that an installer started after another
// was killed undoes what the killed one did.
type installState struct {
	path     string // file holding our entry
	written  []byte // its bytes as we wrote (or found) them
	origPath string // path, or the lone plugin config path was made of, which may come back
	present  bool   // our entry was in place when last seen
}

// fightState tracks another agent dropping our entry.
type fightState struct {
	streak   int       // losses in a row, each within the window of our last insert
	inserted time.Time // our last insert
	until    time.Time // no insert before
}

// status is what readiness is made of.
type status struct {
	binOK, kubeOK bool
	entryOK       bool
	entryWhy      string // why the entry is not in place
	entryPath     string // file with our entry
	stopping      bool
}

// New checks cfg, fills its defaults and reads the binary to install.
func New(cfg Config) (*Installer, error) {
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
	src, err := digestFile(cfg.Binary)
	if err != nil {
		return nil, fmt.Errorf("binary to install: %w", err)
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
		src:     src,
		logged:  make(map[string]string),
	}
	if cfg.Client != nil && cfg.Repair.Mode != RepairOff {
		in.repair = newRepairer(cfg.Client, cfg.NodeName, cfg.Repair, log, in.metrics)
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
	var reports *net.UnixConn
	if in.cfg.ReportSocket != "" {
		if reports, err = listenReports(in.cfg.ReportSocket); err != nil {
			return errors.Join(err, shutdown(srv))
		}
		in.wg.Go(func() { in.readReports(reports) })
		in.log.Info("listening for plugin reports", "socket", in.cfg.ReportSocket)
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
	errs = append(errs, shutdown(srv))
	if err := errors.Join(errs...); err != nil {
		return err
	}
	in.log.Info("uninstalled shunt-cni")
	return nil
}

func shutdown(srv *http.Server) error {
	if srv == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	return srv.Shutdown(ctx)
}

// addWatches watches the directories of the config, the binary and the token: files in them are
// replaced by rename, which a watch on the file itself would not survive.
func (in *Installer) addWatches(w *fsnotify.Watcher) error {
	dirs := []string{in.cfg.NetDir, in.cfg.BinDir, filepath.Dir(in.cfg.KubeconfigFile), filepath.Dir(in.cfg.TokenFile)}
	if in.cfg.CAFile != "" {
		dirs = append(dirs, filepath.Dir(in.cfg.CAFile))
	}
	for _, d := range dirs {
		if err := w.Add(d); err != nil {
			return fmt.Errorf("watch %s: %w", d, err)
		}
	}
	return nil
}

// classify says what an event concerns.
func (in *Installer) classify(ev fsnotify.Event) dirty {
	dir, name := filepath.Split(ev.Name)
	dir = filepath.Clean(dir)
	if strings.HasPrefix(name, tempPrefix) || ev.Op == fsnotify.Chmod {
		return 0
	}
	var d dirty
	if dir == filepath.Clean(in.cfg.BinDir) && name == cni.PluginType {
		d |= dirtyBinary
	}
	switch {
	case dir == filepath.Clean(in.cfg.NetDir) && isConfigFile(name),
		ev.Name == filepath.Clean(in.cfg.KubeconfigFile),
		dir == filepath.Dir(in.cfg.TokenFile),
		in.cfg.CAFile != "" && dir == filepath.Dir(in.cfg.CAFile):
		d |= dirtyFiles
	}
	return d
}

// loop reconciles on file events, after a failure, and every Resync, until ctx is done.
func (in *Installer) loop(ctx context.Context, w *fsnotify.Watcher) {
	pending := dirtyAll
	timer := time.NewTimer(0)
	defer timer.Stop()
	var wakeAt time.Time
	wake := func(d time.Duration) {
		if at := time.Now().Add(d); wakeAt.IsZero() || at.Before(wakeAt) {
			wakeAt = at
			timer.Reset(d)
		}
	}
	resync := time.NewTicker(in.cfg.Resync)
	defer resync.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-w.Events:
			if !ok {
				return
			}
			if d := in.classify(ev); d != 0 {
				in.log.Debug("file event", "file", ev.Name, "op", ev.Op.String())
				pending |= d
				wake(in.cfg.Debounce)
			}
		case err, ok := <-w.Errors:
			if !ok {
				return
			}
			in.log.Warn("file watch", "error", err) // events may be lost: look at everything
			pending = dirtyAll
			wake(in.cfg.Debounce)
		case <-resync.C:
			if err := in.addWatches(w); err != nil {
				in.log.Warn("file watch", "error", err)
			}
			pending = dirtyAll
			wake(0)
		case <-timer.C:
			wakeAt = time.Time{}
			var retry time.Duration
			pending, retry = in.reconcile(ctx, pending)
			if retry > 0 {
				wake(retry)
			}
			in.updateReady(ctx)
		}
	}
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

// ensureBinary installs the binary unless it is in place, and verifies it runs. ok means both.
func (in *Installer) ensureBinary(ctx context.Context) (ok bool, err error) {
	same, err := sameContent(in.binPath, in.src)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return false, err
	}
	if !same {
		if in.binVerified {
			in.log.Warn("plugin binary was removed or changed: installing it again", "file", in.binPath)
		}
		in.binVerified = false
		if err := copyFileAtomic(in.cfg.Binary, in.binPath, binaryMode); err != nil {
			return false, err
		}
		in.log.Info("installed plugin binary", "file", in.binPath, "from", in.cfg.Binary)
	}
	if !in.binVerified {
		ctx, cancel := context.WithTimeout(ctx, verifyTimeout)
		defer cancel()
		versions, err := verifyPlugin(ctx, in.binPath, in.entry)
		if err != nil {
			return false, err
		}
		in.binVerified = true
		in.log.Info("verified plugin binary", "file", in.binPath, "cni_versions", versions)
	}
	return true, nil
}

// ensureKubeconfig writes the plugin's kubeconfig unless it is in place: after a token rotation, it
// is rewritten.
func (in *Installer) ensureKubeconfig() error {
	want, err := kubeconfigFor(in.cfg.APIServer, in.cfg.TokenFile, in.cfg.CAFile)
	if err != nil {
		return err
	}
	have, err := os.ReadFile(in.cfg.KubeconfigFile)
	if err == nil && bytes.Equal(have, want) {
		if fi, err := os.Stat(in.cfg.KubeconfigFile); err == nil && fi.Mode().Perm() == kubeconfigMode {
			return nil
		}
	}
	if err := writeFileAtomic(in.cfg.KubeconfigFile, want, kubeconfigMode); err != nil {
		return err
	}
	if have == nil {
		in.log.Info("wrote plugin kubeconfig", "file", in.cfg.KubeconfigFile, "server", in.cfg.APIServer)
	} else {
		in.log.Info("rewrote plugin kubeconfig: token rotated or file changed", "file", in.cfg.KubeconfigFile)
	}
	return nil
}

// ensureEntry puts our entry in the primary network's config unless it is there. wait > 0 means
// another agent keeps dropping it and the installer waits that long before putting it back.
func (in *Installer) ensureEntry() (wait time.Duration, err error) {
	now := time.Now()
	if now.Before(in.fight.until) {
		return in.fight.until.Sub(now), nil
	}
	setPath := func(ok bool, path, why string) {
		in.setStatus(func(s *status) { s.entryOK, s.entryPath, s.entryWhy = ok, path, why })
	}
	defer func() {
		if err != nil {
			setPath(false, "", err.Error())
		}
	}()
	p, err := primaryConfig(in.cfg.NetDir)
	if errors.Is(err, errNoConfig) {
		setPath(false, "", "no primary network CNI config in "+in.cfg.NetDir+" yet")
		if in.st != nil && in.st.present {
			if d := in.lost(in.st.path, now); d > 0 {
				return d, nil
			}
		}
		if in.note("primary", err) {
			in.log.Info("waiting for the primary network's CNI config", "dir", in.cfg.NetDir)
		}
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	in.note("primary", nil)
	origPath := p.path
	if o, ok := readOriginal(p.path, p.data); ok {
		origPath = o.path
		// The lone config our conflist was made of is there again: a run killed between writing the
		// conflist and removing it, or its agent wrote it again. A .conf sorts before the conflist and
		// is the primary already; a .json sorts after it.
		if c, err := readConfig(o.path); err == nil {
			p = c
		} else if !errors.Is(err, fs.ErrNotExist) {
			return 0, err
		}
	}

	st := in.st
	if st != nil && p.path != st.path && p.path != st.origPath {
		// Another file is now first: take our entry out of the old one.
		in.log.Info("primary CNI config is now another file: moving our entry", "from", st.path, "to", p.path)
		if err := in.restore(st.path); err != nil {
			return 0, err
		}
		in.st, st = nil, nil
		in.fight = fightState{}
	}

	found, same := false, false
	if p.isList() {
		if found, same, err = FindEntry(p.data, in.entry); err != nil {
			return 0, fmt.Errorf("%s: %w", p.path, err)
		}
	}
	if same {
		if st == nil || st.path != p.path || !bytes.Equal(st.written, p.data) {
			// Found in place (an earlier run), or the file changed around our entry.
			in.st = &installState{path: p.path, written: p.data, origPath: origPath}
			in.log.Info("our entry is in the primary CNI config", "file", p.path, "restored_on_uninstall", origPath)
		}
		in.st.present = true
		setPath(true, p.path, "")
		return 0, nil
	}
	setPath(false, p.path, "our entry is missing from "+p.path)

	if st != nil && st.present && !found {
		if d := in.lost(p.path, now); d > 0 {
			return d, nil
		}
	}

	target, out := p.path, []byte(nil)
	if p.isList() {
		if out, err = InsertEntry(p.data, in.entry); err != nil {
			return 0, fmt.Errorf("%s: %w", p.path, err)
		}
	} else {
		// The conflist records the config it is made of, and is in place (one rename) before that
		// config is removed: wherever a crash stops the sequence below, the original bytes are on
		// disk, in the config file or in the conflist.
		if out, err = ConfToConflist(p.data, in.entry); err == nil {
			out, err = AddOriginal(out, filepath.Base(p.path), p.mode, p.data)
		}
		if err != nil {
			return 0, fmt.Errorf("%s: %w", p.path, err)
		}
		target = strings.TrimSuffix(p.path, filepath.Ext(p.path)) + ".conflist"
		if have, err := os.ReadFile(target); err == nil && !in.madeByUs(st, target, have) {
			return 0, fmt.Errorf("turning %s into a conflist would replace %s, which is not ours", p.path, target)
		}
	}
	if err := writeFileAtomic(target, out, p.mode); err != nil {
		return 0, err
	}
	if err := in.stepDone(stepConflistWritten); err != nil {
		return 0, err
	}
	if target != p.path {
		if err := removeFileSynced(p.path); err != nil {
			return 0, err
		}
		if err := in.stepDone(stepOriginalRemoved); err != nil {
			return 0, err
		}
		in.log.Info("turned the primary CNI config into a conflist and appended our entry", "file", target, "from", p.path)
	} else {
		in.log.Info("appended our entry to the primary CNI config", "file", target)
	}
	in.st = &installState{path: target, written: out, origPath: origPath, present: true}
	in.fight.inserted = now
	setPath(true, target, "")
	return 0, nil
}

// stepDone calls the step hook, if any.
func (in *Installer) stepDone(name string) error {
	if in.step == nil {
		return nil
	}
	return in.step(name)
}

// readConfig reads the lone plugin config at path, as primaryConfig takes it.
func readConfig(path string) (*configFile, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if _, err := libcni.NetworkPluginConfFromBytes(data); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &configFile{path: path, data: data, mode: fi.Mode().Perm()}, nil
}

// madeByUs reports whether the conflist at path, with data, is one we made of a lone plugin config:
// the one we wrote, or one with our entry or our record of the original, which an earlier run wrote.
func (in *Installer) madeByUs(st *installState, path string, data []byte) bool {
	if st != nil && bytes.Equal(data, st.written) {
		return true
	}
	if _, ok := readOriginal(path, data); ok {
		return true
	}
	found, _, err := FindEntry(data, in.entry)
	return err == nil && found
}

// lost records that another agent dropped our entry from file: one more fight. It returns how long
// to wait before putting the entry back: 0 at first, growing when the fights go on.
func (in *Installer) lost(file string, now time.Time) time.Duration {
	in.st.present = false
	in.metrics.rewrites.Inc()
	if now.Sub(in.fight.inserted) <= in.cfg.FightWindow {
		in.fight.streak++
	} else {
		in.fight.streak = 1
	}
	d := fightBackoff(in.fight.streak, in.cfg.FightThreshold, in.cfg.FightBackoff, in.cfg.FightBackoffMax)
	if d == 0 {
		in.log.Info("another agent rewrote the CNI config without our entry: putting it back", "file", file)
		return 0
	}
	in.fight.until = now.Add(d)
	in.log.Warn("another agent keeps rewriting the CNI config and dropping our entry: backing off before putting it back; "+
		"find the agent that owns the file (the primary CNI's installer) and make it keep chained plugins",
		"file", file, "times", in.fight.streak, "within", in.cfg.FightWindow, "backoff", d)
	return d
}

// fightBackoff is the wait before putting our entry back after the streak-th loss in a row: none
// below threshold, then base doubling up to max.
func fightBackoff(streak, threshold int, base, max time.Duration) time.Duration {
	if streak < threshold {
		return 0
	}
	d := base
	for range streak - threshold {
		if d *= 2; d >= max {
			return max
		}
	}
	return min(d, max)
}

// restore takes our entry out of the config file at path. A conflist we made of a lone plugin
// config, unchanged since but for our entry, gives way to that config, byte for byte; any other file
// keeps every byte but our entry and our record of the original. It works from the file alone, so
// that it undoes what a killed run did too.
func (in *Installer) restore(path string) error {
	cur, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if o, ok := readOriginal(path, cur); ok && madeOf(cur, o.data, in.entry) {
		switch have, err := os.ReadFile(o.path); {
		case errors.Is(err, fs.ErrNotExist):
			if err := writeFileAtomic(o.path, o.data, o.mode); err != nil {
				return err
			}
		case err != nil:
			return err
		case !bytes.Equal(have, o.data):
			// Its agent wrote it again since: the newer one stays.
			in.log.Info("the CNI config our conflist was made of was written again: keeping it", "file", o.path)
		}
		if err := in.stepDone(stepOriginalWritten); err != nil {
			return err
		}
		if err := removeFileSynced(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		in.log.Info("restored the CNI config", "file", o.path, "removed", path)
		return nil
	}
	out, err := RemoveEntry(cur)
	if err == nil {
		out, err = RemoveOriginal(out)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if bytes.Equal(out, cur) {
		return nil
	}
	mode := fs.FileMode(defaultNetConfigMode)
	if fi, err := os.Stat(path); err == nil {
		mode = fi.Mode().Perm()
	}
	if err := writeFileAtomic(path, out, mode); err != nil {
		return err
	}
	in.log.Info("removed our entry from the CNI config, which changed since we wrote it", "file", path)
	return nil
}

// madeOf reports whether the conflist data is what ConfToConflist makes of conf, but for our entry
// (entry, or another of ours) and our record of conf: nobody changed it since.
func madeOf(data, conf, entry []byte) bool {
	want, err := ConfToConflist(conf, entry)
	if err == nil {
		want, err = RemoveEntry(want)
	}
	if err != nil {
		return false
	}
	got, err := RemoveEntry(data)
	if err == nil {
		got, err = RemoveOriginal(got)
	}
	return err == nil && bytes.Equal(got, want)
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
	for _, f := range []string{in.binPath, in.cfg.KubeconfigFile} {
		if err := os.Remove(f); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (in *Installer) setStatus(f func(*status)) {
	in.mu.Lock()
	defer in.mu.Unlock()
	f(&in.status)
}

// readiness reports whether the plugin is installed and verified, checking the conflist and the
// binary on disk, and why not.
func (in *Installer) readiness() (bool, string) {
	in.mu.Lock()
	s := in.status
	in.mu.Unlock()
	switch {
	case s.stopping:
		return false, "shutting down"
	case !s.binOK:
		return false, "plugin binary " + in.binPath + " not installed and verified"
	case !s.kubeOK:
		return false, "plugin kubeconfig " + in.cfg.KubeconfigFile + " not written"
	case !s.entryOK:
		return false, s.entryWhy
	}
	data, err := os.ReadFile(s.entryPath)
	if err != nil {
		return false, err.Error()
	}
	if _, same, err := FindEntry(data, in.entry); err != nil || !same {
		return false, "our entry is missing from " + s.entryPath
	}
	if _, err := os.Stat(in.binPath); err != nil {
		return false, err.Error()
	}
	return true, "shunt-cni is installed in " + s.entryPath
}

// updateReady logs readiness changes and, the first time the plugin is ready, starts removing the
// node's startup taint.
func (in *Installer) updateReady(ctx context.Context) {
	ok, why := in.readiness()
	if ok == in.wasReady {
		return
	}
	in.wasReady = ok
	if !ok {
		in.metrics.ready.Set(0)
		in.log.Warn("shunt-cni not ready", "reason", why)
		return
	}
	in.metrics.ready.Set(1)
	in.log.Info("shunt-cni installed and ready", "conflist", in.status.entryPath, "binary", in.binPath,
		"kubeconfig", in.cfg.KubeconfigFile)
	if !in.readyOnce && in.cfg.Client != nil {
		in.readyOnce = true
		in.wg.Go(func() { in.untaint(ctx) })
	}
}

// untaint removes the node's startup taint, retrying until it succeeds or ctx is done.
func (in *Installer) untaint(ctx context.Context) {
	wait := backoff{min: time.Second, max: 30 * time.Second}
	for ctx.Err() == nil {
		removed, err := removeTaint(ctx, in.cfg.Client, in.cfg.NodeName, in.cfg.TaintKey)
		if err == nil {
			if removed {
				in.log.Info("removed the node's startup taint", "node", in.cfg.NodeName, "taint", in.cfg.TaintKey+":NoSchedule")
			} else {
				in.log.Info("node has no startup taint", "node", in.cfg.NodeName, "taint", in.cfg.TaintKey+":NoSchedule")
			}
			return
		}
		if ctx.Err() != nil {
			return
		}
		in.log.Warn("remove the node's startup taint", "node", in.cfg.NodeName, "error", err)
		sleep(ctx, wait.next())
	}
}
