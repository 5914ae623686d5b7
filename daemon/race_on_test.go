//go:build race

package daemon_test

// raceBuild: the tests run under -race, and so does the udm they build.
const raceBuild = true
