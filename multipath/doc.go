// Package multipath is being written; see DESIGN.md.
package multipath
