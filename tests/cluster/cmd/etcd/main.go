// Command etcd is the etcd server at the version k8s.io/kubernetes itself requires (go.mod), for the
// e2e cluster of scripts/cluster.sh.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
