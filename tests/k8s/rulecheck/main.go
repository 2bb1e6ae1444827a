// rulecheck parses Prometheus rule files with Prometheus' own rule-file parser (model/rulefmt), which also parses
// every PromQL expression and label/annotation template: the checks `promtool check rules` runs on each file,
// without building promtool (whose service-discovery SDKs make a cold build take many minutes).
// Usage: rulecheck FILE...; exit 0 and "SUCCESS: N rules" per file, or exit 1 with every error.
package main

import (
	"fmt"
	"os"

	"github.com/prometheus/common/model"
	"github.com/prometheus/common/promslog"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: rulecheck FILE...")
		os.Exit(2)
	}
	failed := false
	for _, file := range os.Args[1:] {
		groups, errs := rulefmt.ParseFile(file, false, model.UTF8Validation, parser.NewParser(parser.Options{}), promslog.NewNopLogger())
		if len(errs) > 0 {
			failed = true
			for _, err := range errs {
				fmt.Fprintln(os.Stderr, err)
			}
			continue
		}
		n := 0
		for _, g := range groups.Groups {
			n += len(g.Rules)
		}
		fmt.Printf("%s: SUCCESS: %d rules\n", file, n)
	}
	if failed {
		os.Exit(1)
	}
}
