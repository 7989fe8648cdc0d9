package install

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/shuntmesh/shunt/cni"
)

// metrics are the installer's Prometheus metrics, on a registry of their own.
type metrics struct {
	reg *prometheus.Registry

	programmed    prometheus.Counter
	skipped       prometheus.Counter
	addFailures   prometheus.Counter
	checkFailures prometheus.Counter
	reports       *prometheus.CounterVec
	addDuration   *prometheus.HistogramVec
	repairs       *prometheus.CounterVec
	rewrites      prometheus.Counter
	ready         prometheus.Gauge
	backend       *prometheus.GaugeVec
	migrations    *prometheus.CounterVec
	podsAudited   prometheus.Gauge
	podsDrifted   prometheus.Gauge
	podDrifted    *prometheus.GaugeVec
	driftRepairs  *prometheus.CounterVec
	auditSeconds  prometheus.Gauge
	auditTime     prometheus.Gauge
	// captureUnknown counts the meshed pods without a record that started before the plugin recorded
	// pods on the node.
	captureUnknown prometheus.Gauge
	// The node agent's answers to the plugin.
	agentRequests     *prometheus.CounterVec
	agentFetchSeconds prometheus.Histogram
	podReads          *prometheus.CounterVec
	runners           *prometheus.CounterVec
}

// Phases of an ADD in shunt_cni_add_duration_seconds.
const (
	phaseTotal   = "total"
	phaseAPI     = "api"
	phaseProgram = "program"
)

func newMetrics() *metrics {
	counter := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help})
	}
	gauge := func(name, help string) prometheus.Gauge {
		return prometheus.NewGauge(prometheus.GaugeOpts{Name: name, Help: help})
	}
	m := &metrics{
		reg:           prometheus.NewRegistry(),
		programmed:    counter("shunt_cni_pods_programmed_total", "Pods whose capture rules the plugin programmed (ADD)."),
		skipped:       counter("shunt_cni_pods_skipped_total", "Pods the plugin left alone (ADD): not meshed, excluded namespace, host network."),
		addFailures:   counter("shunt_cni_add_failures_total", "ADDs that failed for a pod that must be captured."),
		checkFailures: counter("shunt_cni_check_failures_total", "CHECKs that found a pod's rules differing from its plan."),
		reports: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shunt_cni_reports_total",
			Help: "Reports received from the plugin, by command and outcome.",
		}, []string{"command", "outcome"}),
		addDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "shunt_cni_add_duration_seconds",
			Help:    "Time of an ADD: the whole command (phase total), reading the Pod (api), programming rules (program).",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 20},
		}, []string{"phase"}),
		repairs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shunt_cni_repairs_total",
			Help: "Pods repaired because they started without capture rules, by action (delete, label).",
		}, []string{"action"}),
		rewrites: counter("shunt_cni_conflist_rewrites_total",
			"Times another agent rewrote or removed the CNI config, dropping our entry."),
		ready: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "shunt_cni_ready",
			Help: "1 when the plugin is installed and verified, else 0.",
		}),
		backend: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "shunt_cni_backend_info",
			Help: "1 for the backend new pods of this node get, and why (from the configuration and the kernel).",
		}, []string{"backend", "reason"}),
		migrations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shunt_cni_pod_migrations_total",
			Help: "Running pods moved to the node's backend (--migrate-pods), by outcome: migrated, unchanged, failed, forgotten.",
		}, []string{"outcome"}),
		podsAudited: gauge("shunt_cni_pods_audited", "Pods the last drift audit checked: every pod the plugin recorded on the node whose namespace exists."),
		podsDrifted: gauge("shunt_cni_pods_drifted", "Pods whose capture rules the last drift audit found differing from their settings (before any repair)."),
		podDrifted: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "shunt_cni_pod_drifted",
			Help: "1 while the last drift audit found the pod's capture rules differing from its settings (and left them), else 0.",
		}, []string{"namespace", "pod"}),
		driftRepairs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shunt_cni_drift_repairs_total",
			Help: "Drifted pods repaired in place by the audit, by action (reconcile) and outcome (done, failed).",
		}, []string{"action", "outcome"}),
		auditSeconds: gauge("shunt_cni_audit_duration_seconds", "Wall time of the last drift audit."),
		auditTime:    gauge("shunt_cni_audit_last_timestamp_seconds", "When the last drift audit ended (Unix time)."),
		captureUnknown: gauge("shunt_cni_pods_capture_unknown",
			"Running meshed pods without a record that started before the plugin recorded pods on the node (an upgrade from a release that wrote none): their capture state is unknown; they are not repaired."),
		agentRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shunt_cni_agent_pod_requests_total",
			Help: "Pods the plugin asked the node agent for, by source of the answer (cache: the agent's watch; api: read from the API server, for a pod the watch has not brought yet) and outcome (found, not_found, error).",
		}, []string{"source", "outcome"}),
		runners: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shunt_cni_command_runs_total",
			Help: "The plugin's commands by what ran them (agent: the node agent, for the shim; standalone: the plugin's own process).",
		}, []string{"command", "runner"}),
		podReads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shunt_cni_pod_reads_total",
			Help: "Pods the plugin read for an ADD, by where from (agent: the node agent; api: the API server, the agent being unreachable).",
		}, []string{"source"}),
		agentFetchSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "shunt_cni_agent_pod_fetch_duration_seconds",
			Help:    "Time of the agent's reads from the API server of pods its watch had not brought.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1},
		}),
	}
	m.reg.MustRegister(m.programmed, m.skipped, m.addFailures, m.checkFailures, m.reports, m.addDuration,
		m.repairs, m.rewrites, m.ready, m.backend, m.migrations,
		m.podsAudited, m.podsDrifted, m.podDrifted, m.driftRepairs, m.auditSeconds, m.auditTime, m.captureUnknown,
		m.agentRequests, m.agentFetchSeconds, m.podReads, m.runners,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// observe counts a report of the plugin.
func (m *metrics) observe(r cni.Report) {
	command, outcome := r.Command, r.Outcome
	switch command {
	case "ADD", "CHECK", "DEL":
	default:
		command = "other"
	}
	switch outcome {
	case cni.OutcomeProgrammed, cni.OutcomeSkipped, cni.OutcomeFailed, cni.OutcomeCheckFailed, cni.OutcomeChecked, cni.OutcomeRemoved:
	default:
		outcome = "other"
	}
	m.reports.WithLabelValues(command, outcome).Inc()
	runner := "standalone"
	if r.InAgent {
		runner = "agent"
	}
	m.runners.WithLabelValues(command, runner).Inc()
	switch {
	case command == "ADD":
		switch outcome {
		case cni.OutcomeProgrammed:
			m.programmed.Inc()
		case cni.OutcomeSkipped:
			m.skipped.Inc()
		case cni.OutcomeFailed:
			m.addFailures.Inc()
		}
		switch r.PodSource {
		case "":
		case cni.PodSourceAgent, cni.PodSourceAPI:
			m.podReads.WithLabelValues(r.PodSource).Inc()
		default:
			m.podReads.WithLabelValues("other").Inc()
		}
		m.addDuration.WithLabelValues(phaseTotal).Observe(r.TotalSeconds)
		if r.APISeconds > 0 {
			m.addDuration.WithLabelValues(phaseAPI).Observe(r.APISeconds)
		}
		if r.ProgramSeconds > 0 {
			m.addDuration.WithLabelValues(phaseProgram).Observe(r.ProgramSeconds)
		}
	case outcome == cni.OutcomeCheckFailed:
		m.checkFailures.Inc()
	}
}
