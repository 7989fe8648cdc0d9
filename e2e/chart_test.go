//go:build linux

package e2e

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	appsv1 "k8s.io/api/apps/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/restmapper"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	"github.com/shuntmesh/shunt/internal/testutil"
	"github.com/shuntmesh/shunt/internal/testutil/kube"
)

// The chart under test, relative to this package's directory (go test's working directory), and
// what it is expected to render.
const (
	chartDir       = "../deploy/shunt-cni"
	chartName      = "shunt-cni"
	chartNamespace = "shunt-system"
	chartRelease   = "mesh"

	chartTaintKey      = "cni.shunt.io/not-ready"
	chartDefaultPort   = 9102
	chartContainerBin  = "/host/opt/cni/bin"
	chartContainerNet  = "/host/etc/cni/net.d"
	chartRunDir        = "/var/run/shunt"
	chartFieldManager  = "shunt-chart-test"
	chartDefaultLabel  = "cni.shunt.io/repair"
	chartPriorityClass = "system-node-critical"
)

// TestChartLint runs `helm lint --strict`, which fails on warnings too, with the default values
// and with each value set of TestChartTemplate.
func TestChartLint(t *testing.T) {
	helm := helmBinary(t)
	for _, tc := range chartCases {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"lint", "--strict", chartDir}, tc.args...)
			out, err := runHelm(t, helm, args...)
			if err != nil {
				t.Fatalf("helm %s: %v\n%s", strings.Join(args, " "), err, out)
			}
			if !strings.Contains(out, "0 chart(s) failed") {
				t.Fatalf("helm lint: no success line:\n%s", out)
			}
		})
	}
}

// chartCase is a value set and what it changes from the defaults.
type chartCase struct {
	name    string
	release string   // chartRelease when empty
	args    []string // --set, --set-json
	want    chartWant
}

// chartWant is what a rendering must show; chartDefaults fills what a case leaves unset.
type chartWant struct {
	fullname     string
	podVerbs     []string // pods verbs of the ClusterRole, sorted as rendered
	binDir       string   // host directories
	netDir       string
	args         []string // installer arguments, in order, after "install-cni"
	port         int32
	tolerations  []corev1.Toleration // tolerations beyond the chart's own
	nodeSelector map[string]string
	agentArgs    []string            // the eBPF agent's arguments after "ebpf"; nil: no agent
	addCaps      []corev1.Capability // capabilities the installer adds back
	noCaps       bool                // none added back (addCaps nil means the defaults')
}

func chartDefaults() chartWant {
	return chartWant{
		fullname: chartRelease + "-" + chartName,
		podVerbs: []string{"get", "list", "watch", "delete"},
		binDir:   "/opt/cni/bin",
		netDir:   "/etc/cni/net.d",
		args: []string{
			"--cni-bin-dir=" + chartContainerBin,
			"--cni-net-dir=" + chartContainerNet,
			"--kubeconfig-file=shunt-kubeconfig",
			"--host-kubeconfig-path=/etc/cni/net.d/shunt-kubeconfig",
			"--report-socket=" + chartRunDir + "/cni.sock",
			"--repair-mode=delete",
			"--log-level=info",
			"--log-format=text",
			"--exclude-namespaces=kube-system",
			"--cni-log-level=info",
			"--cni-api-timeout=20s",
			"--backend=iptables",
			"--ebpf-pin-dir=/sys/fs/bpf/shunt",
			"--state-dir=" + chartRunDir + "/pods",
			"--serve-cni=true",
			"--audit-interval=5s",
			"--drift-repair=reconcile",
			"--monitoring-port=9102",
		},
		// The drift audit enters the pods' namespaces.
		addCaps:      []corev1.Capability{"NET_ADMIN", "NET_RAW", "SYS_ADMIN"},
		port:         chartDefaultPort,
		nodeSelector: map[string]string{"kubernetes.io/os": "linux"},
	}
}

// chartArgsWith returns the default installer arguments with those of the same flag replaced by
// set; a flag not there yet goes after the one before it in set, or else before --monitoring-port.
func chartArgsWith(set []string) []string {
	args := chartDefaults().args
	flagOf := func(arg string) string { f, _, _ := strings.Cut(arg, "="); return f }
	index := func(flag string) int { return slices.IndexFunc(args, func(a string) bool { return flagOf(a) == flag }) }
	for i, s := range set {
		if j := index(flagOf(s)); j >= 0 {
			args[j] = s
			continue
		}
		at := len(args) - 1
		if i > 0 {
			if j := index(flagOf(set[i-1])); j >= 0 {
				at = j + 1
			}
		}
		args = slices.Insert(args, at, s)
	}
	return args
}

var chartCases = []chartCase{
	{name: "defaults"},
	{
		name: "repair label",
		args: []string{"--set", "repair.mode=label"},
		want: chartWant{
			podVerbs: []string{"get", "list", "watch", "patch"},
			args: chartArgsWith([]string{
				"--repair-mode=label", "--repair-label-key=" + chartDefaultLabel,
			}),
		},
	},
	{
		name: "repair off",
		args: []string{"--set", "repair.mode=off", "--set", "repair.labelKey=example.com/ignored"},
		want: chartWant{
			podVerbs: []string{"get", "list", "watch"},
			args:     chartArgsWith([]string{"--repair-mode=off"}),
		},
	},
	{
		name: "custom dirs",
		args: []string{"--set", "cniBinDir=/home/kubernetes/bin", "--set", "cniNetDir=/var/lib/cni/net.d/",
			"--set", "kubeconfigFilename=ZZZ-shunt-kubeconfig"},
		want: chartWant{
			binDir: "/home/kubernetes/bin",
			netDir: "/var/lib/cni/net.d/",
			// Where the container sees the directories does not change; only the host's paths do.
			args: chartArgsWith([]string{
				"--kubeconfig-file=ZZZ-shunt-kubeconfig",
				"--host-kubeconfig-path=/var/lib/cni/net.d/ZZZ-shunt-kubeconfig",
			}),
		},
	},
	{
		name: "exclude namespaces",
		args: []string{"--set-json", `excludeNamespaces=["kube-system","istio-system","monitoring"]`},
		want: chartWant{args: chartArgsWith([]string{"--exclude-namespaces=kube-system,istio-system,monitoring"})},
	},
	{
		name: "exclude no namespace",
		args: []string{"--set-json", "excludeNamespaces=[]"},
		want: chartWant{args: chartArgsWith([]string{"--exclude-namespaces="})},
	},
	{
		name: "plugin settings",
		args: []string{"--set", "logLevel=debug", "--set", "logFormat=json", "--set", "cniLogLevel=warn",
			"--set", "apiTimeout=1m30s", "--set", "iptablesVariant=nft"},
		want: chartWant{args: chartArgsWith([]string{
			"--log-level=debug", "--log-format=json", "--cni-log-level=warn", "--cni-api-timeout=1m30s",
			"--backend=iptables", "--iptables-variant=nft",
		})},
	},
	{
		name: "nftables backend",
		args: []string{"--set", "backend=nftables"},
		want: chartWant{args: chartArgsWith([]string{"--backend=nftables"})},
	},
	{
		// The agent enters the pods' namespaces: the three capabilities that takes, and no more.
		name: "migrate pods",
		args: []string{"--set", "backend=nftables", "--set", "migratePods=true", "--set-json", `extraCapabilities=["NET_ADMIN","DAC_OVERRIDE"]`},
		want: chartWant{
			args:    chartArgsWith([]string{"--backend=nftables", "--state-dir=" + chartRunDir + "/pods", "--migrate-pods"}),
			addCaps: []corev1.Capability{"NET_ADMIN", "DAC_OVERRIDE", "NET_RAW", "SYS_ADMIN"},
		},
	},
	{
		// No audit and no commands in the agent: every capability dropped, as the installer alone
		// needs none.
		name: "audit off",
		args: []string{"--set", "audit.enabled=false", "--set", "audit.repair=label", "--set", "serveCNI=false"},
		want: chartWant{args: slices.DeleteFunc(chartArgsWith([]string{"--serve-cni=false", "--audit-interval=0"}),
			func(a string) bool { return strings.HasPrefix(a, "--drift-repair=") }), noCaps: true},
	},
	{
		// The drift audit labels: the repair loop's delete and the label's patch.
		name: "audit label",
		args: []string{"--set", "audit.repair=label"},
		want: chartWant{podVerbs: []string{"get", "list", "watch", "delete", "patch"},
			args: chartArgsWith([]string{"--drift-repair=label"})},
	},
	{
		name: "audit settings",
		args: []string{"--set", "audit.interval=30s", "--set", "audit.repair=off"},
		want: chartWant{args: chartArgsWith([]string{"--audit-interval=30s", "--drift-repair=off"})},
	},
	{
		name: "monitoring port",
		args: []string{"--set", "monitoring.port=15019"},
		want: chartWant{port: 15019, args: chartArgsWith([]string{"--monitoring-port=15019"})},
	},
	{
		name: "scheduling",
		args: []string{"--set-json", `tolerations=[{"key":"dedicated","operator":"Equal","value":"gpu","effect":"NoSchedule"}]`,
			"--set-json", `nodeSelector={"kubernetes.io/os":"linux","pool":"mesh"}`},
		want: chartWant{
			tolerations:  []corev1.Toleration{{Key: "dedicated", Operator: corev1.TolerationOpEqual, Value: "gpu", Effect: corev1.TaintEffectNoSchedule}},
			nodeSelector: map[string]string{"kubernetes.io/os": "linux", "pool": "mesh"},
		},
	},
	{
		name: "ebpf agent",
		args: []string{"--set", "ebpf.enabled=true", "--set", "ebpf.pinDir=/sys/fs/bpf/mesh",
			"--set", "ebpf.cgroup=/sys/fs/cgroup/kubepods.slice", "--set", "ebpf.gcInterval=30s"},
		want: chartWant{
			args: chartArgsWith([]string{"--ebpf-pin-dir=/sys/fs/bpf/mesh"}),
			agentArgs: []string{"run", "--pin-dir=/sys/fs/bpf/mesh", "--cgroup=/sys/fs/cgroup/kubepods.slice",
				"--gc-interval=30s", "--health-addr=:9103", "--unload-on-stop=false", "--log-level=info", "--log-format=text"},
		},
	},
	{
		// Names stay valid and within 63 characters however long the release name.
		name:    "long release name",
		release: strings.Repeat("r", 53), // helm's longest
		args:    []string{"--set", "ebpf.enabled=true"},
		want: chartWant{fullname: strings.Repeat("r", 53) + "-shunt-cni",
			agentArgs: []string{"run", "--pin-dir=/sys/fs/bpf/shunt", "--gc-interval=1m", "--health-addr=:9103",
				"--unload-on-stop=false", "--log-level=info", "--log-format=text"}},
	},
	{
		// The chart name is not repeated in a release named after it.
		name:    "release named after the chart",
		release: "shunt-cni",
		want:    chartWant{fullname: "shunt-cni"},
	},
}

func (tc chartCase) releaseName() string {
	if tc.release != "" {
		return tc.release
	}
	return chartRelease
}

func (tc chartCase) expected() chartWant {
	w, d := tc.want, chartDefaults()
	if w.fullname == "" {
		w.fullname = d.fullname
	}
	if w.podVerbs == nil {
		w.podVerbs = d.podVerbs
	}
	if w.binDir == "" {
		w.binDir = d.binDir
	}
	if w.netDir == "" {
		w.netDir = d.netDir
	}
	if w.args == nil {
		w.args = d.args
	}
	if w.port == 0 {
		w.port = d.port
	}
	if w.nodeSelector == nil {
		w.nodeSelector = d.nodeSelector
	}
	if w.addCaps == nil && !w.noCaps {
		w.addCaps = d.addCaps
	}
	return w
}

// TestChartTemplate renders the chart with each value set and checks the objects, decoded
// strictly into their API types: the security context, the RBAC rules (exactly, no more),
// scheduling on every node, host directories, the installer's arguments, probes and labels.
// The arguments must also be ones this repository's `shunt install-cni` accepts.
func TestChartTemplate(t *testing.T) {
	helm := helmBinary(t)
	shunt := bins.Path(t, pkgShunt)
	for _, tc := range chartCases {
		t.Run(tc.name, func(t *testing.T) {
			objs := renderChart(t, helm, tc.releaseName(), tc.args...)
			checkChart(t, objs, tc.releaseName(), tc.expected())

			// --help after the flags: cobra parses every flag and value first, then prints the
			// usage and exits 0; an unknown flag or a bad value fails.
			args := append(slices.Clone(objs.daemonSet.Spec.Template.Spec.Containers[0].Args), "--help")
			out, err := exec.Command(shunt, args...).CombinedOutput()
			if err != nil || !bytes.Contains(out, []byte("shunt install-cni [flags]")) {
				t.Errorf("shunt %s: %v, want its usage:\n%s", strings.Join(args, " "), err, out)
			}
			if objs.agent != nil {
				args := append(slices.Clone(objs.agent.Spec.Template.Spec.Containers[0].Args), "--help")
				out, err := exec.Command(shunt, args...).CombinedOutput()
				if err != nil || !bytes.Contains(out, []byte("shunt ebpf run [flags]")) {
					t.Errorf("shunt %s: %v, want its usage:\n%s", strings.Join(args, " "), err, out)
				}
			}
		})
	}
}

// TestChartSchemaRejects shows that values.schema.json stops bad values before anything is
// rendered, naming the value and what it accepts.
func TestChartSchemaRejects(t *testing.T) {
	helm := helmBinary(t)
	for _, tc := range []struct {
		name string
		args []string
		want []string // in helm's error, each
	}{
		{"repair mode", []string{"--set", "repair.mode=restart"},
			[]string{"at '/repair/mode': value must be one of 'delete', 'label', 'off'"}},
		{"log format", []string{"--set", "logFormat=xml"},
			[]string{"at '/logFormat': value must be one of 'text', 'json'"}},
		{"log level", []string{"--set", "logLevel=trace"},
			[]string{"at '/logLevel': value must be one of 'debug', 'info', 'warn', 'error'"}},
		{"backend", []string{"--set", "backend=ebpf"},
			[]string{"at '/backend': value must be one of 'iptables', 'nftables'"}},
		{"iptables variant", []string{"--set", "iptablesVariant=iptables"},
			[]string{"at '/iptablesVariant': value must be one of '', 'nft', 'legacy'"}},
		{"all at once", []string{"--set", "repair.mode=restart", "--set", "logFormat=xml"},
			[]string{"at '/repair/mode'", "at '/logFormat'"}},
		{"misspelt key", []string{"--set", "repair.mod=label"},
			[]string{"at '/repair': additional properties 'mod' not allowed"}},
		{"relative dir", []string{"--set", "cniBinDir=opt/cni/bin"}, []string{"at '/cniBinDir'"}},
		{"namespace name", []string{"--set-json", `excludeNamespaces=["Kube_System"]`}, []string{"at '/excludeNamespaces/0'"}},
		{"api timeout", []string{"--set", "apiTimeout=20"}, []string{"at '/apiTimeout'"}},
		{"capability prefix", []string{"--set-json", `extraCapabilities=["CAP_NET_ADMIN"]`}, []string{"at '/extraCapabilities/0'"}},
		{"ebpf pin dir outside bpffs", []string{"--set", "ebpf.pinDir=/var/run/shunt"}, []string{"at '/ebpf/pinDir'"}},
		{"ebpf gc interval", []string{"--set", "ebpf.gcInterval=often"}, []string{"at '/ebpf/gcInterval'"}},
		{"ebpf misspelt key", []string{"--set", "ebpf.enable=true"}, []string{"at '/ebpf': additional properties 'enable' not allowed"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"template", chartRelease, chartDir, "--namespace", chartNamespace}, tc.args...)
			out, err := runHelm(t, helm, args...)
			if err == nil {
				t.Fatalf("helm %s: rendered, want a schema error:\n%s", strings.Join(args, " "), out)
			}
			if !strings.Contains(out, "values don't meet the specifications of the schema") {
				t.Fatalf("helm %s: %v, not a schema error:\n%s", strings.Join(args, " "), err, out)
			}
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("helm's error lacks %q:\n%s", w, out)
				}
			}
		})
	}
}

// TestChartServerDryRun sends every object of each rendering to a real kube-apiserver with
// server-side apply and dryRun=All: the server decodes them with strict field validation,
// defaults, validates and admits them, and stores nothing. Broken objects, sent the same way,
// must be rejected, which proves the dry run validates. Then the RBAC objects are applied for
// real and the API server's authorizer answers what the installer's account may do.
func TestChartServerDryRun(t *testing.T) {
	helm := helmBinary(t)
	c := kube.Start(t)
	ctx := t.Context()

	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: chartNamespace}}
	if _, err := c.Client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create namespace %s: %v", chartNamespace, err)
	}
	dc, err := discovery.NewDiscoveryClientForConfig(c.Config)
	if err != nil {
		t.Fatal(err)
	}
	groups, err := restmapper.GetAPIGroupResources(dc)
	if err != nil {
		t.Fatalf("discovery: %v", err)
	}
	a := &chartApplier{mapper: restmapper.NewDiscoveryRESTMapper(groups)}
	if a.client, err = dynamic.NewForConfig(c.Config); err != nil {
		t.Fatal(err)
	}

	for _, tc := range chartCases {
		t.Run(tc.name, func(t *testing.T) {
			objs := renderChart(t, helm, tc.releaseName(), tc.args...)
			for _, u := range objs.all {
				got, err := a.apply(t, u, true)
				if err != nil {
					t.Errorf("server rejected %s %s: %v", u.GetKind(), u.GetName(), err)
					continue
				}
				// The answer is the object as it would be stored: ours, defaulted by the server.
				if got.GetName() != u.GetName() || got.GetCreationTimestamp().Time.IsZero() ||
					!slices.ContainsFunc(got.GetManagedFields(), func(m metav1.ManagedFieldsEntry) bool { return m.Manager == chartFieldManager }) {
					t.Errorf("%s %s: the dry run's answer is not the stored form: %v", u.GetKind(), u.GetName(), got.Object)
				}
				if u.GetKind() == "DaemonSet" {
					policy, _, _ := unstructured.NestedString(got.Object, "spec", "template", "spec", "restartPolicy")
					history, _, _ := unstructured.NestedInt64(got.Object, "spec", "revisionHistoryLimit")
					if policy != "Always" || history == 0 {
						t.Errorf("DaemonSet %s: not defaulted by the server (restartPolicy %q, revisionHistoryLimit %d)", u.GetName(), policy, history)
					}
				}
				// Nothing was stored.
				if _, err := a.resource(t, u).Get(ctx, u.GetName(), metav1.GetOptions{}); !apierrors.IsNotFound(err) {
					t.Errorf("%s %s after a dry run: %v, want NotFound", u.GetKind(), u.GetName(), err)
				}
			}
		})
	}

	// Negative controls: the same dry run refuses an invalid DaemonSet and an unknown field.
	objs := renderChart(t, helm, chartRelease)
	ds := chartFind(t, objs, "DaemonSet")
	for _, tc := range []struct {
		name  string
		edit  func(*unstructured.Unstructured)
		check func(error) bool
		want  string
	}{
		{
			name: "invalid restart policy",
			edit: func(u *unstructured.Unstructured) {
				_ = unstructured.SetNestedField(u.Object, "Never", "spec", "template", "spec", "restartPolicy")
			},
			check: apierrors.IsInvalid,
			want:  "restartPolicy",
		},
		{
			name: "selector not matching the template",
			edit: func(u *unstructured.Unstructured) {
				_ = unstructured.SetNestedField(u.Object, "other", "spec", "selector", "matchLabels", "app.kubernetes.io/name")
			},
			check: apierrors.IsInvalid,
			want:  "selector",
		},
		{
			name: "unknown field",
			edit: func(u *unstructured.Unstructured) {
				_ = unstructured.SetNestedField(u.Object, "HostToContainer", "spec", "template", "spec", "mountPropogation")
			},
			// Apply rejects it whatever fieldValidation says, as a 500 in Kubernetes 1.36: accept
			// any API error that names the field.
			check: func(err error) bool { return chartStatusCode(err) != 0 },
			want:  ".spec.template.spec.mountPropogation: field not declared in schema",
		},
	} {
		t.Run("rejects "+tc.name, func(t *testing.T) {
			broken := ds.DeepCopy()
			tc.edit(broken)
			_, err := a.apply(t, broken, true)
			if err == nil || !tc.check(err) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("dry run of a DaemonSet with %s: %v (reason %q, code %d), want an error with %q", tc.name, err,
					apierrors.ReasonForError(err), chartStatusCode(err), tc.want)
			}
		})
	}

	// What the installer's account may do, per repair mode, asked of the authorizer once the
	// chart's RBAC objects are stored.
	for _, tc := range []struct {
		release string
		args    []string
		mode    string
	}{
		{"rbac-delete", nil, "delete"},
		{"rbac-label", []string{"--set", "repair.mode=label"}, "label"},
		{"rbac-off", []string{"--set", "repair.mode=off"}, "off"},
	} {
		t.Run("authorizer "+tc.mode, func(t *testing.T) {
			objs := renderChart(t, helm, tc.release, tc.args...)
			for _, u := range objs.all {
				if u.GetKind() == "DaemonSet" {
					continue
				}
				if _, err := a.apply(t, u, false); err != nil {
					t.Fatalf("apply %s %s: %v", u.GetKind(), u.GetName(), err)
				}
			}
			user := "system:serviceaccount:" + chartNamespace + ":" + objs.serviceAccount.Name
			groups := []string{"system:serviceaccounts", "system:serviceaccounts:" + chartNamespace, "system:authenticated"}
			type access struct{ group, resource, subresource, verb string }
			allowed := []access{
				{"", "pods", "", "get"}, {"", "pods", "", "list"}, {"", "pods", "", "watch"},
				{"", "nodes", "", "get"}, {"", "nodes", "", "patch"}, {"", "nodes", "status", "patch"},
				{"", "events", "", "create"},
			}
			denied := []access{
				{"", "pods", "", "create"}, {"", "pods", "", "update"}, {"", "pods", "exec", "create"},
				{"", "pods", "eviction", "create"}, {"", "pods", "status", "patch"},
				{"", "nodes", "", "update"}, {"", "nodes", "", "delete"}, {"", "nodes", "status", "update"},
				{"", "nodes", "proxy", "get"}, {"", "secrets", "", "get"}, {"", "secrets", "", "list"},
				{"", "configmaps", "", "get"}, {"", "serviceaccounts", "token", "create"},
				{"", "events", "", "delete"}, {"events.k8s.io", "events", "", "create"},
				{"apps", "daemonsets", "", "get"}, {"rbac.authorization.k8s.io", "clusterroles", "", "escalate"},
			}
			switch tc.mode {
			case "delete":
				allowed = append(allowed, access{"", "pods", "", "delete"})
				denied = append(denied, access{"", "pods", "", "patch"})
			case "label":
				allowed = append(allowed, access{"", "pods", "", "patch"})
				denied = append(denied, access{"", "pods", "", "delete"})
			case "off":
				denied = append(denied, access{"", "pods", "", "delete"}, access{"", "pods", "", "patch"})
			}
			review := func(x access) authorizationv1.SubjectAccessReviewStatus {
				t.Helper()
				sar := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
					User: user, Groups: groups,
					ResourceAttributes: &authorizationv1.ResourceAttributes{
						Namespace: "default", Group: x.group, Resource: x.resource, Subresource: x.subresource, Verb: x.verb,
					},
				}}
				if x.resource == "nodes" {
					sar.Spec.ResourceAttributes.Namespace = ""
				}
				res, err := c.Client.AuthorizationV1().SubjectAccessReviews().Create(ctx, sar, metav1.CreateOptions{})
				if err != nil {
					t.Fatalf("access review: %v", err)
				}
				return res.Status
			}
			// The authorizer learns of the role and the binding through watches: give it time.
			var missing []access
			for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
				missing = slices.DeleteFunc(slices.Clone(allowed), func(x access) bool { return review(x).Allowed })
				if len(missing) == 0 || time.Now().After(deadline) {
					break
				}
			}
			for _, x := range missing {
				t.Errorf("%s may not %s %s/%s, want allowed", user, x.verb, x.group, strings.TrimSuffix(x.resource+"/"+x.subresource, "/"))
			}
			for _, x := range denied {
				if res := review(x); res.Allowed {
					t.Errorf("%s may %s %s/%s (%s), want denied", user, x.verb, x.group,
						strings.TrimSuffix(x.resource+"/"+x.subresource, "/"), res.Reason)
				}
			}
		})
	}
}

// chartStatusCode is the HTTP status of an API error, 0 for another error.
func chartStatusCode(err error) int32 {
	var s apierrors.APIStatus
	if errors.As(err, &s) {
		return s.Status().Code
	}
	return 0
}

// chartApplier applies arbitrary objects with server-side apply.
type chartApplier struct {
	client dynamic.Interface
	mapper meta.RESTMapper
}

func (a *chartApplier) resource(t testing.TB, u *unstructured.Unstructured) dynamic.ResourceInterface {
	t.Helper()
	gvk := u.GroupVersionKind()
	m, err := a.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		t.Fatalf("%s: %v", gvk, err)
	}
	if m.Scope.Name() == meta.RESTScopeNameNamespace {
		if u.GetNamespace() == "" {
			t.Fatalf("%s %s: namespaced, but rendered without a namespace", gvk.Kind, u.GetName())
		}
		return a.client.Resource(m.Resource).Namespace(u.GetNamespace())
	}
	if u.GetNamespace() != "" {
		t.Fatalf("%s %s: cluster-scoped, but rendered in namespace %s", gvk.Kind, u.GetName(), u.GetNamespace())
	}
	return a.client.Resource(m.Resource)
}

// apply sends u with server-side apply and strict field validation; with dryRun, dryRun=All.
func (a *chartApplier) apply(t testing.TB, u *unstructured.Unstructured, dryRun bool) (*unstructured.Unstructured, error) {
	t.Helper()
	data, err := u.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	opts := metav1.PatchOptions{FieldManager: chartFieldManager, Force: ptr.To(true), FieldValidation: "Strict"}
	if dryRun {
		opts.DryRun = []string{metav1.DryRunAll}
	}
	return a.resource(t, u).Patch(t.Context(), u.GetName(), types.ApplyPatchType, data, opts)
}

// chartObjects is one rendering of the chart: every object in order, and each kind decoded.
type chartObjects struct {
	all            []*unstructured.Unstructured
	serviceAccount *corev1.ServiceAccount
	clusterRole    *rbacv1.ClusterRole
	binding        *rbacv1.ClusterRoleBinding
	daemonSet      *appsv1.DaemonSet
	agent          *appsv1.DaemonSet // the eBPF agent, when ebpf.enabled
}

// renderChart runs `helm template` and decodes its output. Each object is decoded strictly
// (unknown or duplicate fields fail t); a kind the chart should not have, or one twice, fails t.
func renderChart(t testing.TB, helm, release string, args ...string) *chartObjects {
	t.Helper()
	args = append([]string{"template", release, chartDir, "--namespace", chartNamespace}, args...)
	cmd := helmCommand(t, helm, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("helm %s: %v\n%s", strings.Join(args, " "), err, stderr.Bytes())
	}
	objs := &chartObjects{}
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(out)))
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("read helm's output: %v", err)
		}
		j, err := yaml.YAMLToJSON(doc)
		if err != nil {
			t.Fatalf("rendered YAML: %v\n%s", err, doc)
		}
		if string(j) == "null" { // only comments
			continue
		}
		u := &unstructured.Unstructured{}
		if err := u.UnmarshalJSON(j); err != nil {
			t.Fatalf("rendered object: %v\n%s", err, doc)
		}
		objs.all = append(objs.all, u)
		var target any
		switch u.GetKind() {
		case "ServiceAccount":
			target = chartSet(t, &objs.serviceAccount)
		case "ClusterRole":
			target = chartSet(t, &objs.clusterRole)
		case "ClusterRoleBinding":
			target = chartSet(t, &objs.binding)
		case "DaemonSet":
			if strings.HasSuffix(u.GetName(), "-ebpf") {
				target = chartSet(t, &objs.agent)
			} else {
				target = chartSet(t, &objs.daemonSet)
			}
		default:
			t.Fatalf("unexpected %s %s in the chart", u.GetKind(), u.GetName())
		}
		if err := yaml.UnmarshalStrict(doc, target); err != nil {
			t.Fatalf("decode %s %s: %v\n%s", u.GetKind(), u.GetName(), err, doc)
		}
	}
	if objs.serviceAccount == nil || objs.clusterRole == nil || objs.binding == nil || objs.daemonSet == nil {
		t.Fatalf("the chart lacks objects: rendered %d:\n%s", len(objs.all), out)
	}
	return objs
}

// chartSet allocates *p, once per rendering, and returns it.
func chartSet[T any](t testing.TB, p **T) *T {
	t.Helper()
	if *p != nil {
		t.Fatalf("the chart renders two %T", *p)
	}
	*p = new(T)
	return *p
}

func chartFind(t testing.TB, objs *chartObjects, kind string) *unstructured.Unstructured {
	t.Helper()
	for _, u := range objs.all {
		if u.GetKind() == kind {
			return u
		}
	}
	t.Fatalf("no %s rendered", kind)
	return nil
}

// checkChart checks one rendering against w.
func checkChart(t *testing.T, objs *chartObjects, release string, w chartWant) {
	t.Helper()
	// Names, namespaces, labels.
	selector := map[string]string{
		"app.kubernetes.io/name":     chartName,
		"app.kubernetes.io/instance": release,
	}
	labels := map[string]string{
		"app.kubernetes.io/name":       chartName,
		"app.kubernetes.io/instance":   release,
		"app.kubernetes.io/version":    "0.1.0",
		"app.kubernetes.io/component":  "cni-node",
		"app.kubernetes.io/part-of":    "shunt",
		"app.kubernetes.io/managed-by": "Helm",
		"helm.sh/chart":                "shunt-cni-0.1.0",
	}
	checkAgent(t, objs, release, w)
	for _, u := range objs.all {
		what := u.GetKind() + " " + u.GetName()
		if objs.agent != nil && u.GetKind() == "DaemonSet" && u.GetName() == objs.agent.Name {
			continue // checkAgent
		}
		if u.GetName() != w.fullname {
			t.Errorf("%s: name %q, want %q", what, u.GetName(), w.fullname)
		}
		if errs := validation.IsDNS1123Label(u.GetName()); len(errs) > 0 {
			t.Errorf("%s: name not a DNS label: %v", what, errs)
		}
		namespaced := u.GetKind() == "ServiceAccount" || u.GetKind() == "DaemonSet"
		if namespaced && u.GetNamespace() != chartNamespace || !namespaced && u.GetNamespace() != "" {
			t.Errorf("%s: namespace %q", what, u.GetNamespace())
		}
		if diff := cmp.Diff(labels, u.GetLabels()); diff != "" {
			t.Errorf("%s: labels (-want +got):\n%s", what, diff)
		}
		for k, v := range u.GetLabels() {
			if errs := validation.IsValidLabelValue(v); len(errs) > 0 {
				t.Errorf("%s: label %s: %v", what, k, errs)
			}
		}
	}

	// RBAC: exactly these rules.
	wantRules := []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: w.podVerbs},
		{APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: []string{"get", "patch"}},
		{APIGroups: []string{""}, Resources: []string{"nodes/status"}, Verbs: []string{"patch"}},
		{APIGroups: []string{""}, Resources: []string{"events"}, Verbs: []string{"create"}},
	}
	if diff := cmp.Diff(wantRules, objs.clusterRole.Rules, cmpopts.EquateEmpty()); diff != "" {
		t.Errorf("ClusterRole rules (-want +got):\n%s", diff)
	}
	if objs.clusterRole.AggregationRule != nil {
		t.Errorf("ClusterRole aggregates: %+v", objs.clusterRole.AggregationRule)
	}
	wantRef := rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: objs.clusterRole.Name}
	wantSubjects := []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: objs.serviceAccount.Name, Namespace: chartNamespace}}
	if diff := cmp.Diff(wantRef, objs.binding.RoleRef); diff != "" {
		t.Errorf("ClusterRoleBinding roleRef (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(wantSubjects, objs.binding.Subjects); diff != "" {
		t.Errorf("ClusterRoleBinding subjects (-want +got):\n%s", diff)
	}

	// The DaemonSet.
	ds := objs.daemonSet
	if diff := cmp.Diff(selector, ds.Spec.Selector.MatchLabels); diff != "" || len(ds.Spec.Selector.MatchExpressions) > 0 {
		t.Errorf("selector (-want +got):\n%s", diff)
	}
	for k, v := range selector {
		if ds.Spec.Template.Labels[k] != v {
			t.Errorf("pod template label %s=%q, want %q", k, ds.Spec.Template.Labels[k], v)
		}
	}
	if u := ds.Spec.UpdateStrategy; u.Type != appsv1.RollingUpdateDaemonSetStrategyType || u.RollingUpdate == nil ||
		u.RollingUpdate.MaxUnavailable == nil || u.RollingUpdate.MaxUnavailable.IntValue() < 1 {
		t.Errorf("update strategy %+v, want RollingUpdate with maxUnavailable", u)
	}
	pod := ds.Spec.Template.Spec
	if !pod.HostNetwork {
		t.Error("not hostNetwork")
	}
	if pod.EnableServiceLinks == nil || *pod.EnableServiceLinks {
		t.Error("service links on: the installer takes unset flags from the environment")
	}
	if pod.HostPID || pod.HostIPC {
		t.Errorf("hostPID %v, hostIPC %v", pod.HostPID, pod.HostIPC)
	}
	if pod.PriorityClassName != chartPriorityClass {
		t.Errorf("priorityClassName %q, want %q", pod.PriorityClassName, chartPriorityClass)
	}
	if pod.ServiceAccountName != objs.serviceAccount.Name {
		t.Errorf("serviceAccountName %q, want %q", pod.ServiceAccountName, objs.serviceAccount.Name)
	}
	if g := pod.TerminationGracePeriodSeconds; g == nil || *g < 10 {
		t.Errorf("terminationGracePeriodSeconds %v, want at least 10 for the cleanup", g)
	}
	if diff := cmp.Diff(w.nodeSelector, pod.NodeSelector); diff != "" {
		t.Errorf("nodeSelector (-want +got):\n%s", diff)
	}
	if pod.SecurityContext != nil && !cmp.Equal(*pod.SecurityContext, corev1.PodSecurityContext{}) {
		t.Errorf("pod securityContext %+v: the container's says it all", pod.SecurityContext)
	}

	// Every node: the startup taint, any NoSchedule or NoExecute taint, and the extra tolerations.
	notReady := corev1.Toleration{Key: chartTaintKey, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoSchedule}
	if !slices.Contains(pod.Tolerations, notReady) {
		t.Errorf("no toleration %+v in %+v", notReady, pod.Tolerations)
	}
	for _, taint := range []corev1.Taint{
		{Key: chartTaintKey, Effect: corev1.TaintEffectNoSchedule},
		{Key: "node.kubernetes.io/not-ready", Effect: corev1.TaintEffectNoExecute},
		{Key: "node.kubernetes.io/unreachable", Effect: corev1.TaintEffectNoExecute},
		{Key: "node.kubernetes.io/network-unavailable", Effect: corev1.TaintEffectNoSchedule},
		{Key: "node-role.kubernetes.io/control-plane", Effect: corev1.TaintEffectNoSchedule},
		{Key: "example.com/anything", Value: "x", Effect: corev1.TaintEffectNoExecute},
		{Key: "CriticalAddonsOnly", Value: "true", Effect: corev1.TaintEffectNoSchedule},
	} {
		if !slices.ContainsFunc(pod.Tolerations, func(tol corev1.Toleration) bool {
			return tol.ToleratesTaint(logr.Discard(), &taint, false)
		}) {
			t.Errorf("taint %s does not let the pod run", taint.ToString())
		}
	}
	for _, tol := range w.tolerations {
		if !slices.Contains(pod.Tolerations, tol) {
			t.Errorf("no toleration %+v in %+v", tol, pod.Tolerations)
		}
	}

	// The one container.
	if len(pod.InitContainers) > 0 || len(pod.Containers) != 1 {
		t.Fatalf("%d init containers and %d containers, want one container", len(pod.InitContainers), len(pod.Containers))
	}
	ctr := pod.Containers[0]
	if want := "ghcr.io/shuntmesh/shunt:0.1.0"; ctr.Image != want {
		t.Errorf("image %q, want %q", ctr.Image, want)
	}
	if diff := cmp.Diff([]string{"shunt"}, ctr.Command); diff != "" {
		t.Errorf("command (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(append([]string{"install-cni"}, w.args...), ctr.Args); diff != "" {
		t.Errorf("args (-want +got):\n%s", diff)
	}
	// Fewest privileges: root for the root-owned host directories, and nothing else.
	wantSC := &corev1.SecurityContext{
		RunAsUser:                ptr.To[int64](0),
		RunAsGroup:               ptr.To[int64](0),
		RunAsNonRoot:             ptr.To(false),
		Privileged:               ptr.To(false),
		AllowPrivilegeEscalation: ptr.To(false),
		ReadOnlyRootFilesystem:   ptr.To(true),
		Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}, Add: w.addCaps},
		SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
	}
	if diff := cmp.Diff(wantSC, ctr.SecurityContext); diff != "" {
		t.Errorf("securityContext (-want +got):\n%s", diff)
	}
	nodeName := corev1.EnvVar{Name: "NODE_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "spec.nodeName"}}}
	if !slices.ContainsFunc(ctr.Env, func(e corev1.EnvVar) bool { return cmp.Equal(e, nodeName) }) {
		t.Errorf("no NODE_NAME from spec.nodeName in %+v", ctr.Env)
	}
	if len(ctr.Resources.Requests) == 0 {
		t.Error("no resource requests")
	}

	// Probes and the scrape annotations on the monitoring port.
	if len(ctr.Ports) != 1 || ctr.Ports[0].ContainerPort != w.port || ctr.Ports[0].HostPort != 0 && ctr.Ports[0].HostPort != w.port {
		t.Errorf("ports %+v, want one, %d", ctr.Ports, w.port)
	}
	for _, p := range []struct {
		name  string
		probe *corev1.Probe
		path  string
	}{{"liveness", ctr.LivenessProbe, "/healthz"}, {"readiness", ctr.ReadinessProbe, "/readyz"}} {
		if p.probe == nil || p.probe.HTTPGet == nil {
			t.Errorf("%s probe %+v, want HTTP GET %s", p.name, p.probe, p.path)
			continue
		}
		g := p.probe.HTTPGet
		if g.Path != p.path || chartPortNumber(ctr, g.Port) != w.port || g.Host != "" {
			t.Errorf("%s probe GET %s%s on port %s (%d), want %s on %d", p.name, g.Host, g.Path, g.Port.String(),
				chartPortNumber(ctr, g.Port), p.path, w.port)
		}
	}
	wantAnnotations := map[string]string{
		"prometheus.io/scrape": "true",
		"prometheus.io/port":   fmt.Sprint(w.port),
		"prometheus.io/path":   "/metrics",
	}
	if diff := cmp.Diff(wantAnnotations, ds.Spec.Template.Annotations); diff != "" {
		t.Errorf("pod annotations (-want +got):\n%s", diff)
	}

	// Host directories: each where the installer's flags say, from the configured host path.
	dirOrCreate := ptr.To(corev1.HostPathDirectoryOrCreate)
	hostPath := func(name, path string) corev1.Volume {
		return corev1.Volume{Name: name, VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: path, Type: dirOrCreate}}}
	}
	wantVolumes := []corev1.Volume{
		hostPath("cni-bin-dir", w.binDir),
		hostPath("cni-net-dir", w.netDir),
		hostPath("shunt-run", chartRunDir),
		hostPath("netns", "/var/run/netns"),
	}
	if w.agentArgs != nil { // the eBPF agent's pins, where the installer's agent registers eBPF pods
		wantVolumes = append(wantVolumes, corev1.Volume{Name: "bpffs", VolumeSource: corev1.VolumeSource{
			HostPath: &corev1.HostPathVolumeSource{Path: "/sys/fs/bpf", Type: ptr.To(corev1.HostPathDirectory)}}})
	}
	wantVolumes = append(wantVolumes, corev1.Volume{Name: "tmp", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}})
	if diff := cmp.Diff(wantVolumes, pod.Volumes, cmpopts.IgnoreFields(corev1.EmptyDirVolumeSource{}, "SizeLimit")); diff != "" {
		t.Errorf("volumes (-want +got):\n%s", diff)
	}
	wantMounts := []corev1.VolumeMount{
		{Name: "cni-bin-dir", MountPath: chartContainerBin},
		{Name: "cni-net-dir", MountPath: chartContainerNet},
		{Name: "shunt-run", MountPath: chartRunDir},
		{Name: "netns", MountPath: "/var/run/netns", ReadOnly: true, MountPropagation: ptr.To(corev1.MountPropagationHostToContainer)},
	}
	if w.agentArgs != nil {
		wantMounts = append(wantMounts, corev1.VolumeMount{Name: "bpffs", MountPath: "/sys/fs/bpf", MountPropagation: ptr.To(corev1.MountPropagationHostToContainer)})
	}
	wantMounts = append(wantMounts, corev1.VolumeMount{Name: "tmp", MountPath: "/tmp"})
	if diff := cmp.Diff(wantMounts, ctr.VolumeMounts); diff != "" {
		t.Errorf("volume mounts (-want +got):\n%s", diff)
	}
}

// chartPortNumber resolves a probe's port, a number or the name of one of c's ports; 0 when it
// names none.
func chartPortNumber(c corev1.Container, p intstr.IntOrString) int32 {
	if p.Type == intstr.Int {
		return p.IntVal
	}
	for _, cp := range c.Ports {
		if cp.Name == p.StrVal {
			return cp.ContainerPort
		}
	}
	return 0
}

// runHelm runs helm and returns its combined output.
func runHelm(t testing.TB, helm string, args ...string) (string, error) {
	t.Helper()
	out, err := helmCommand(t, helm, args...).CombinedOutput()
	return string(out), err
}

// helmCommand is helm with its configuration, cache and data in a temporary directory, and no
// kubeconfig unless args name one: nothing of the user's is read or written.
func helmCommand(t testing.TB, helm string, args ...string) *exec.Cmd {
	t.Helper()
	home := t.TempDir()
	cmd := exec.Command(helm, args...)
	cmd.Env = append(os.Environ(),
		"HELM_CONFIG_HOME="+filepath.Join(home, "config"),
		"HELM_CACHE_HOME="+filepath.Join(home, "cache"),
		"HELM_DATA_HOME="+filepath.Join(home, "data"),
		"KUBECONFIG="+filepath.Join(home, "no-kubeconfig"),
	)
	return cmd
}

// The helm CLI the chart tests run: helm.sh/helm/v3/cmd/helm at the version e2e/tools/helm pins,
// built into bin/tools/helm under the repository root.
const helmPackage = "helm.sh/helm/v3/cmd/helm"

// helmBinary returns the helm binary, built into bin/tools/helm from e2e/tools/helm unless a build
// of its current go.mod and go.sum is there (see testutil.ToolBinary). As helm's Makefile, the build
// sets helm's version and the Kubernetes version it assumes without a cluster (.Capabilities.KubeVersion,
// lint's deprecations), from client-go's: v0.N -> 1.N.
func helmBinary(t testing.TB) string {
	t.Helper()
	root, err := testutil.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	modDir := filepath.Join(root, "e2e", "tools", "helm")
	list := exec.Command("go", "list", "-m", "-f", "{{.Version}}", "helm.sh/helm/v3", "k8s.io/client-go")
	list.Dir, list.Env = modDir, testutil.ToolEnv
	out, err := list.Output()
	if err != nil {
		t.Fatalf("go list -m in %s: %v", modDir, helmExitDetail(err))
	}
	versions := strings.Fields(string(out))
	if len(versions) != 2 {
		t.Fatalf("go list -m in %s: %q", modDir, out)
	}
	var minor int
	if _, err := fmt.Sscanf(versions[1], "v0.%d.", &minor); err != nil {
		t.Fatalf("client-go version %s: %v", versions[1], err)
	}
	ldflags := []string{"-s", "-w"}
	for _, kv := range []string{
		"internal/version.version=" + versions[0],
		"internal/version.metadata=",
		"pkg/lint/rules.k8sVersionMajor=1",
		fmt.Sprintf("pkg/lint/rules.k8sVersionMinor=%d", minor),
		"pkg/chartutil.k8sVersionMajor=1",
		fmt.Sprintf("pkg/chartutil.k8sVersionMinor=%d", minor),
	} {
		ldflags = append(ldflags, "-X", "helm.sh/helm/v3/"+kv)
	}
	return testutil.ToolBinary(t, "e2e/tools/helm", helmPackage, "bin/tools/helm", "-trimpath", "-ldflags="+strings.Join(ldflags, " "))
}

// helmExitDetail adds a failed command's standard error to err.
func helmExitDetail(err error) error {
	var ee *exec.ExitError
	if errors.As(err, &ee) && len(ee.Stderr) > 0 {
		return fmt.Errorf("%w\n%s", err, ee.Stderr)
	}
	return err
}

// checkAgent checks the eBPF agent's DaemonSet: there only when enabled, its own name and selector,
// the kernel-facing privileges it needs and no more, no API access, and its arguments.
func checkAgent(t *testing.T, objs *chartObjects, release string, w chartWant) {
	t.Helper()
	if w.agentArgs == nil {
		if objs.agent != nil {
			t.Errorf("an eBPF agent DaemonSet %s without ebpf.enabled", objs.agent.Name)
		}
		return
	}
	ds := objs.agent
	if ds == nil {
		t.Fatal("ebpf.enabled renders no agent DaemonSet")
	}
	if want := w.fullname + "-ebpf"; len(w.fullname) <= 58 && ds.Name != want || len(ds.Name) > 63 || ds.Name == objs.daemonSet.Name {
		t.Errorf("agent name %q (installer %q)", ds.Name, objs.daemonSet.Name)
	}
	if errs := validation.IsDNS1123Label(ds.Name); len(errs) > 0 {
		t.Errorf("agent name not a DNS label: %v", errs)
	}
	selector := map[string]string{"app.kubernetes.io/name": chartName + "-ebpf", "app.kubernetes.io/instance": release}
	if diff := cmp.Diff(selector, ds.Spec.Selector.MatchLabels); diff != "" {
		t.Errorf("agent selector (-want +got):\n%s", diff)
	}
	// Neither DaemonSet may adopt the other's pods.
	matches := func(sel, labels map[string]string) bool {
		for k, v := range sel {
			if labels[k] != v {
				return false
			}
		}
		return true
	}
	if matches(objs.daemonSet.Spec.Selector.MatchLabels, ds.Spec.Template.Labels) || matches(ds.Spec.Selector.MatchLabels, objs.daemonSet.Spec.Template.Labels) {
		t.Error("the installer's and the agent's selectors overlap")
	}
	if c := ds.Labels["app.kubernetes.io/component"]; c != "ebpf-agent" {
		t.Errorf("agent component label %q", c)
	}
	pod := ds.Spec.Template.Spec
	if pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken {
		t.Error("the agent mounts a service-account token: it needs no API access")
	}
	if !pod.HostPID || !pod.HostNetwork || pod.HostIPC {
		t.Errorf("hostPID %v hostNetwork %v hostIPC %v, want the host's PIDs and network only", pod.HostPID, pod.HostNetwork, pod.HostIPC)
	}
	if len(pod.Containers) != 1 {
		t.Fatalf("%d agent containers", len(pod.Containers))
	}
	ctr := pod.Containers[0]
	if diff := cmp.Diff(append([]string{"ebpf"}, w.agentArgs...), ctr.Args); diff != "" {
		t.Errorf("agent args (-want +got):\n%s", diff)
	}
	sc := ctr.SecurityContext
	if sc == nil || sc.Privileged == nil || *sc.Privileged || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
		sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Errorf("agent security context %+v: want unprivileged, no escalation, read-only root", sc)
	}
	wantCaps := &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}, Add: []corev1.Capability{"BPF", "NET_ADMIN", "SYS_ADMIN", "SYS_PTRACE"}}
	if sc != nil {
		if diff := cmp.Diff(wantCaps, sc.Capabilities); diff != "" {
			t.Errorf("agent capabilities (-want +got):\n%s", diff)
		}
	}
	mounts := map[string]string{}
	for _, m := range ctr.VolumeMounts {
		mounts[m.MountPath] = m.Name
	}
	for _, p := range []string{"/sys/fs/bpf", "/sys/fs/cgroup"} {
		if mounts[p] == "" {
			t.Errorf("agent lacks a mount at %s", p)
		}
	}
	if ctr.LivenessProbe == nil || ctr.ReadinessProbe == nil || ctr.ReadinessProbe.HTTPGet == nil || ctr.ReadinessProbe.HTTPGet.Path != "/readyz" {
		t.Error("agent probes missing")
	}
}
