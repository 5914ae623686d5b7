// Package perf is being written; see DESIGN.md.
package perf
