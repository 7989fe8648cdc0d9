// Package kube runs a real kube-apiserver, backed by the system's etcd, on
// loopback ports for a test. There is no controller-manager, scheduler or
// kubelet: objects are stored and served, and nothing acts on them (pods stay
// Pending, deleted namespaces stay Terminating, no default ServiceAccount).
// It is imported by _test.go files only; the tests need no root, only etcd.
package kube

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// Timeouts of Start and of stopping the servers.
const (
	ReadyTimeout = 2 * time.Minute  // etcd healthy, then /readyz OK and namespace default there
	StopTimeout  = 15 * time.Second // from SIGTERM to SIGKILL
)

// etcdPath is where Debian's etcd-server package installs etcd.
const etcdPath = "/usr/bin/etcd"

// portAttempts bounds the restarts of a server that lost its free port to
// another process between our probe and its bind.
const portAttempts = 3

var errPortInUse = errors.New("port taken")

// Cluster is a running kube-apiserver and its etcd.
type Cluster struct {
	// Config authenticates as an admin (group system:masters).
	Config *rest.Config
	// Kubeconfig is the path of an admin kubeconfig file.
	Kubeconfig string
	// URL is the API server's address, https://127.0.0.1:<port>.
	URL string
	// CAData is the PEM certificate of the CA that signed the serving
	// certificate.
	CAData []byte
	// Client is an admin clientset.
	Client kubernetes.Interface

	dir       string
	netns     string
	etcd      *proc
	apiserver *proc
}

// Option configures Start.
type Option func(*options)

type options struct {
	flags map[string]string
	netns string
}

// APIServerFlag sets kube-apiserver's --name=value, replacing Start's value
// for name; an empty value drops the flag.
func APIServerFlag(name, value string) Option {
	return func(o *options) { o.flags[name] = value }
}

// InNetNS runs etcd and kube-apiserver on the loopback of the network
// namespace at path (/run/netns/NAME, say), which needs root. Config and
// Client dial into it; the Kubeconfig files work for processes inside it
// only.
func InNetNS(path string) Option {
	return func(o *options) { o.netns = path }
}

// Start starts etcd and kube-apiserver, waits until the API server is ready,
// and stops both when t ends. It fails t if they do not start; when etcd is
// missing it skips t, unless the test runs as root (as CI does, which
// installs it).
func Start(t testing.TB, opts ...Option) *Cluster {
	t.Helper()
	etcdBin := requireEtcd(t)
	apiserverBin := APIServerBinary(t)

	o := options{flags: make(map[string]string)}
	for _, opt := range opts {
		opt(&o)
	}

	begin := time.Now()
	c := &Cluster{dir: t.TempDir(), netns: o.netns}
	pki, err := writePKI(c.dir)
	if err != nil {
		t.Fatalf("write certificates: %v", err)
	}
	c.CAData = pki.caPEM

	ctx, cancel := context.WithTimeout(context.Background(), ReadyTimeout)
	defer cancel()

	var etcdURL string
	for attempt := 1; ; attempt++ {
		etcdURL, err = c.startEtcd(ctx, t, etcdBin)
		if err == nil {
			break
		}
		if !errors.Is(err, errPortInUse) || attempt == portAttempts {
			c.fatalf(t, "etcd: %v", err)
		}
	}

	flags := apiserverFlags(c.dir, pki, etcdURL)
	audit, err := writeAuditPolicy(c.dir)
	if err != nil {
		t.Fatalf("write audit policy: %v", err)
	}
	maps.Copy(flags, audit)
	maps.Copy(flags, o.flags)
	for attempt := 1; ; attempt++ {
		err = c.startAPIServer(ctx, t, apiserverBin, flags, pki.adminToken)
		if err == nil {
			break
		}
		if !errors.Is(err, errPortInUse) || attempt == portAttempts {
			c.fatalf(t, "kube-apiserver: %v", err)
		}
	}

	c.Kubeconfig = filepath.Join(c.dir, "admin.kubeconfig")
	if err := writeKubeconfig(c.Kubeconfig, c.URL, c.CAData, "admin", pki.adminToken); err != nil {
		t.Fatalf("write kubeconfig: %v", err)
	}
	t.Logf("kube-apiserver %s ready at %s in %v", Version, c.URL, time.Since(begin).Round(time.Millisecond))
	return c
}

// requireEtcd returns the etcd binary's path, or skips or fails t when there
// is none.
func requireEtcd(t testing.TB) string {
	t.Helper()
	path, err := exec.LookPath("etcd")
	if err == nil {
		return path
	}
	if _, err := os.Stat(etcdPath); err == nil {
		return etcdPath
	}
	if os.Geteuid() == 0 {
		t.Fatalf("etcd not found (%v): install Debian's etcd-server (.ci/deps)", err)
	}
	t.Skipf("etcd not found (%v): install Debian's etcd-server", err)
	return ""
}

// startEtcd starts etcd on free loopback ports and waits until it is
// healthy. It returns the client URL.
func (c *Cluster) startEtcd(ctx context.Context, t testing.TB, bin string) (string, error) {
	ports, err := c.freePorts(2)
	if err != nil {
		return "", err
	}
	clientURL := "http://127.0.0.1:" + strconv.Itoa(ports[0])
	peerURL := "http://127.0.0.1:" + strconv.Itoa(ports[1])
	dataDir := filepath.Join(c.dir, "etcd")
	if err := os.RemoveAll(dataDir); err != nil { // a failed attempt's
		return "", err
	}
	p, err := startProc(c.netns, filepath.Join(c.dir, "etcd.log"), bin,
		"--name=test",
		"--data-dir="+dataDir,
		"--listen-client-urls="+clientURL,
		"--advertise-client-urls="+clientURL,
		"--listen-peer-urls="+peerURL,
		"--initial-advertise-peer-urls="+peerURL,
		"--initial-cluster=test="+peerURL,
		"--unsafe-no-fsync", // a test's data need not survive a crash
		"--logger=zap",
		"--log-outputs=stderr",
	)
	if err != nil {
		return "", err
	}
	c.etcd = p
	t.Cleanup(func() { p.stop(StopTimeout) })

	hc := &http.Client{Timeout: time.Second, Transport: &http.Transport{DialContext: c.dial, DisableKeepAlives: true}}
	err = poll(ctx, p, func() error {
		resp, err := hc.Get(clientURL + "/health")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("/health: %s: %s", resp.Status, body)
		}
		return nil
	})
	if err != nil {
		return "", err
	}
	return clientURL, nil
}

// apiserverFlags returns kube-apiserver's flags but --secure-port.
func apiserverFlags(dir string, p *pki, etcdURL string) map[string]string {
	return map[string]string{
		"etcd-servers":         etcdURL,
		"bind-address":         "127.0.0.1",
		"advertise-address":    "127.0.0.1",
		"cert-dir":             filepath.Join(dir, "certs"), // unused: the files below are given
		"tls-cert-file":        p.certFile,
		"tls-private-key-file": p.keyFile,
		// The admin: a static token in group system:masters.
		"token-auth-file":    p.tokenFile,
		"authorization-mode": "Node,RBAC",
		// TokenRequest (Cluster.TokenFor) signs with this key.
		"service-account-issuer":           "https://kubernetes.default.svc.cluster.local",
		"service-account-key-file":         p.saPubFile,
		"service-account-signing-key-file": p.saKeyFile,
		// Allocated to Services only: nothing here routes to it.
		"service-cluster-ip-range": "10.0.0.0/24",
		// The ServiceAccount plugin rejects pods whose ServiceAccount is
		// missing, and without a controller-manager no namespace gets its
		// "default" one.
		"disable-admission-plugins": "ServiceAccount",
		// Fewer objects and controllers to bootstrap before /readyz.
		"enable-priority-and-fairness": "false",
		// DaemonSets such as the CNI installer run privileged containers.
		"allow-privileged": "true",
		"profiling":        "false",
	}
}

// startAPIServer starts kube-apiserver on a free loopback port and waits
// until /readyz is OK and the namespace default exists.
func (c *Cluster) startAPIServer(ctx context.Context, t testing.TB, bin string, flags map[string]string, token string) error {
	ports, err := c.freePorts(1)
	if err != nil {
		return err
	}
	port := strconv.Itoa(ports[0])
	argv := []string{bin, "--secure-port=" + port}
	for _, name := range slices.Sorted(maps.Keys(flags)) {
		if v := flags[name]; v != "" {
			argv = append(argv, "--"+name+"="+v)
		}
	}
	p, err := startProc(c.netns, filepath.Join(c.dir, "kube-apiserver.log"), argv...)
	if err != nil {
		return err
	}
	c.apiserver = p
	t.Cleanup(func() { p.stop(StopTimeout) }) // before etcd's

	c.URL = "https://127.0.0.1:" + port
	c.Config = &rest.Config{
		Host:            c.URL,
		BearerToken:     token,
		TLSClientConfig: rest.TLSClientConfig{CAData: c.CAData},
		// Tests create objects in bursts; the client's default 5 QPS
		// would throttle them.
		QPS:   100,
		Burst: 200,
	}
	if c.netns != "" {
		c.Config.Dial = c.dial
	}
	client, err := kubernetes.NewForConfig(c.Config)
	if err != nil {
		return err
	}
	c.Client = client

	return poll(ctx, p, func() error {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		body, err := client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(rctx)
		if err != nil {
			return fmt.Errorf("/readyz: %w: %s", err, body)
		}
		_, err = client.CoreV1().Namespaces().Get(rctx, metav1.NamespaceDefault, metav1.GetOptions{})
		return err
	})
}

// poll calls f until it succeeds, p exits, or ctx ends.
func poll(ctx context.Context, p *proc, f func() error) error {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		err := f()
		if err == nil {
			return nil
		}
		if p.exited() {
			if p.logContains("address already in use") {
				return fmt.Errorf("%w: exited: %v", errPortInUse, p.err)
			}
			return fmt.Errorf("exited: %v", p.err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("not ready after %v: %w", ReadyTimeout, err)
		case <-tick.C:
		}
	}
}

// fatalf fails t with the tails of the servers' logs.
func (c *Cluster) fatalf(t testing.TB, format string, args ...any) {
	t.Helper()
	for name, p := range map[string]*proc{"etcd": c.etcd, "kube-apiserver": c.apiserver} {
		if p != nil {
			t.Logf("%s log (%s), last lines:\n%s", name, p.logPath, p.tail(40))
		}
	}
	t.Fatalf(format, args...)
}

// freePorts returns n distinct loopback TCP ports of c's network namespace
// that were free a moment ago.
func (c *Cluster) freePorts(n int) ([]int, error) {
	var ports []int
	var err error
	nsErr := c.inNetNS(func() {
		for range n {
			var l net.Listener
			if l, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
				return
			}
			defer l.Close()
			ports = append(ports, l.Addr().(*net.TCPAddr).Port)
		}
	})
	return ports, errors.Join(nsErr, err)
}

// dial connects from c's network namespace.
func (c *Cluster) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var conn net.Conn
	var err error
	nsErr := c.inNetNS(func() {
		conn, err = (&net.Dialer{}).DialContext(ctx, network, addr)
	})
	return conn, errors.Join(nsErr, err)
}

// inNetNS runs f in c's network namespace: on a thread of its own that the
// runtime retires afterwards, as f's sockets stay in the namespace they
// were made in.
func (c *Cluster) inNetNS(f func()) error {
	if c.netns == "" {
		f()
		return nil
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked
		if err := enterNetNS(c.netns); err != nil {
			errc <- err
			return
		}
		f()
		errc <- nil
	}()
	return <-errc
}

// Stop stops the API server, leaving etcd running, so a test can see what
// its code does while the API is down. It is idempotent; the cluster stops
// by itself when the test ends.
func (c *Cluster) Stop() {
	c.apiserver.stop(StopTimeout)
}

// TokenFor returns a token of the ServiceAccount namespace/serviceAccount
// from the TokenRequest API, creating the namespace and the account when
// missing. The account has no rights until a test binds it to some.
func (c *Cluster) TokenFor(t testing.TB, namespace, serviceAccount string) string {
	t.Helper()
	ctx := t.Context()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}
	if _, err := c.Client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("create namespace %s: %v", namespace, err)
	}
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: serviceAccount, Namespace: namespace}}
	if _, err := c.Client.CoreV1().ServiceAccounts(namespace).Create(ctx, sa, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("create serviceaccount %s/%s: %v", namespace, serviceAccount, err)
	}
	expiry := int64(time.Hour / time.Second)
	req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &expiry}}
	tr, err := c.Client.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, serviceAccount, req, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("token for %s/%s: %v", namespace, serviceAccount, err)
	}
	return tr.Status.Token
}

// KubeconfigFor writes a kubeconfig that reaches c with token (from
// TokenFor, say) and returns its path.
func (c *Cluster) KubeconfigFor(t testing.TB, token string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := writeKubeconfig(path, c.URL, c.CAData, "user", token); err != nil {
		t.Fatalf("write kubeconfig: %v", err)
	}
	return path
}

func writeKubeconfig(path, server string, caData []byte, user, token string) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["test"] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: caData}
	cfg.AuthInfos[user] = &clientcmdapi.AuthInfo{Token: token}
	cfg.Contexts["test"] = &clientcmdapi.Context{Cluster: "test", AuthInfo: user}
	cfg.CurrentContext = "test"
	return clientcmd.WriteToFile(*cfg, path)
}
