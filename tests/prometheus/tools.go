//go:build tools

// Package prometheus pins the Prometheus server that scripts/prometheus.sh builds for the tests that
// scrape a running gateway with the chart's alert rules loaded. Nothing here is compiled into Toolwarden.
package prometheus

import (
	_ "github.com/prometheus/prometheus/cmd/prometheus"
)
