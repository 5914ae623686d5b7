//go:build race

package drill

// raceBuild: the tests run under -race, and so does the udm they build.
const raceBuild = true
