// Package dmtest holds block devices for tests of dm and of the packages
// built on it: MemDevice (in memory, and told to fail, hang, delay or
// complete I/O in one of three ways) and NullDevice (for benchmarks).
package dmtest
