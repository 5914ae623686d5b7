//go:build !race

package drill

const raceBuild = false
