// A CoreDNS with only the plugins the e2e cluster's DNS needs: Service and Pod names from the API server, no
// forwarding (nothing in the cluster may resolve, or reach, names outside this machine), and bind, so that it
// listens on the node's bridge address only, never on the machine's external interface.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
)

// The order in which plugins see a query: upstream CoreDNS's plugin.cfg order, restricted to the ones built in.
var directives = []string{"bind", "ready", "health", "errors", "log", "loadbalance", "cache", "kubernetes"}

func init() {
	if err := dnsserver.SetDirectives(directives); err != nil {
		panic(err)
	}
}

func main() { coremain.Run() }
