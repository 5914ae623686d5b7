// Package nbd is being written; see DESIGN.md.
package nbd
