// Command udm is the userspace device-mapper daemon and its dmsetup-like
// command line.
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "udm: not yet built")
	os.Exit(2)
}
