// Package images holds the scripts that prepare a machine for the
// integration tests: build.sh builds the node, Redis, HAProxy and backend
// images they run (from the host's binaries, so that nothing is pulled),
// and prereqs.sh checks in seconds what a make target needs, installing
// the missing Debian packages when it may. Its Go code is the test of
// prereqs.sh, against fake tools, which make test runs, and, in backend/,
// the application backend of the cluster's proxy test.
package images
