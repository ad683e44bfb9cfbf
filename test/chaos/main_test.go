package chaos

import (
	"fmt"
	"io"
	"os"
	"strings"
	"testing"
	"text/tabwriter"
	"time"
)

// TestMain runs the scenarios and then prints the results table: to
// stdout (shown with -v, or when the package fails) and, with
// CHAOS_TABLE=<file>, to that file.
func TestMain(m *testing.M) {
	code := m.Run()
	var b strings.Builder
	writeTable(&b)
	fmt.Print(b.String())
	if f := os.Getenv("CHAOS_TABLE"); f != "" {
		if err := os.WriteFile(f, []byte(b.String()), 0o644); err != nil {
			fmt.Fprintf(os.Stderr, "chaos: writing %s: %v\n", f, err)
		}
	}
	os.Exit(code)
}

func writeTable(out io.Writer) {
	table.Lock()
	defer table.Unlock()
	if len(table.rows) == 0 {
		return
	}
	fmt.Fprintln(out, "\nchaos suite (memory: the largest node's heap in use / RSS, MiB, from /metrics)")
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "scenario\tnodes up\theap before→after\tRSS before→after\tclients recovered\towed\tlost\tdup\ttook\tverdict")
	for _, r := range table.rows {
		fmt.Fprintf(w, "%s\t%d/%d\t%.1f→%.1f\t%.1f→%.1f\t%d/%d\t%d\t%d\t%d\t%v\t%s\n",
			r.Scenario, r.NodesUp, r.Nodes, r.HeapBefore, r.HeapAft, r.RSSBefore, r.RSSAft,
			r.Recovered, r.Clients, r.Owed, r.Lost, r.Dup, r.Took.Round(100*time.Millisecond), r.Verdict)
	}
	_ = w.Flush()
}
