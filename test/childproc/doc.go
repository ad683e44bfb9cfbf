// Package childproc runs the test binary again as a child process, for
// benchmarks that must measure one side's CPU apart from the other's (a
// node apart from its clients, a server apart from its readers): the
// child is told its part by an environment variable, says its first line
// on stdout when ready, and ends when its stdin closes.
//
// It imports nothing of the project, so that any package's internal tests
// can use it.
package childproc
