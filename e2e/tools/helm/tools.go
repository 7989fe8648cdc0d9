//go:build tools

// Package helm pins the helm CLI the chart tests run (e2e/chart_test.go builds
// helm.sh/helm/v3/cmd/helm from this module). It is a module of its own so
// helm's dependencies stay out of shunt's go.mod; the build tag keeps the
// import, and so the require, without ever compiling this file.
package helm

import _ "helm.sh/helm/v3/cmd/helm"
