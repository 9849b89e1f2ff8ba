// Command ferry-csi-hostpath is the test environment's CSI driver (hostpath.csi.ferry.dev): volumes
// are directories (Filesystem) or files on loop devices (Block) under a data directory, snapshots
// are full copies of them. It serves the CSI Identity, Controller and Node services on one unix
// socket and registers itself with the kubelet (node_driver_registrar.go). It exists because the
// Go module proxy does not serve kubernetes-csi/csi-driver-host-path or node-driver-registrar; see
// the README's test-environment section.
//
// It runs as root on the host, in the kubelet's mount namespace. Everything it knows is kept as
// JSON files beside the data, so a restart loses nothing.
package main

import (
	"context"
	"flag"
	"log"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
)

const version = "0.1.0"

func main() {
	var (
		driverName  = flag.String("driver-name", "hostpath.csi.ferry.dev", "the CSI driver's name")
		endpoint    = flag.String("endpoint", "", "path of the unix socket of the CSI services")
		nodeID      = flag.String("node-id", "", "the node's name, as the kubelet registers it")
		dataDir     = flag.String("data-dir", "", "where volumes and snapshots are kept")
		kubeletRoot = flag.String("kubelet-root", "/var/lib/kubelet", "the kubelet's root directory; no target path outside it is accepted")
		registry    = flag.String("registration-dir", "", "the kubelet's plugin registration directory (default KUBELET_ROOT/plugins_registry)")
	)
	flag.Parse()
	log.SetFlags(log.LstdFlags | log.Lmicroseconds)
	if *endpoint == "" || *nodeID == "" || *dataDir == "" {
		log.Fatal("--endpoint, --node-id and --data-dir are required")
	}
	if *registry == "" {
		*registry = filepath.Join(*kubeletRoot, "plugins_registry")
	}
	root, err := filepath.Abs(*kubeletRoot)
	if err != nil {
		log.Fatalf("kubelet root %s: %v", *kubeletRoot, err)
	}
	if resolved, err := filepath.EvalSymlinks(root); err == nil {
		root = resolved
	}
	store, err := openStore(*dataDir)
	if err != nil {
		log.Fatalf("data directory %s: %v", *dataDir, err)
	}
	d := &driver{name: *driverName, nodeID: *nodeID, kubeletRoot: root, store: store}

	listener, err := listenUnix(*endpoint)
	if err != nil {
		log.Fatalf("CSI endpoint %s: %v", *endpoint, err)
	}
	server := grpc.NewServer(grpc.UnaryInterceptor(logCalls))
	csi.RegisterIdentityServer(server, d)
	csi.RegisterControllerServer(server, d)
	csi.RegisterNodeServer(server, d)
	go func() {
		if err := server.Serve(listener); err != nil {
			log.Fatalf("CSI server: %v", err)
		}
	}()
	log.Printf("%s %s serving CSI on %s, data in %s, node %s", d.name, version, *endpoint, *dataDir, d.nodeID)

	registration, err := startRegistration(*registry, d.name, *endpoint)
	if err != nil {
		log.Fatalf("kubelet plugin registration: %v", err)
	}

	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	sig := <-signals
	log.Printf("%v: stopping", sig)
	// The registration socket goes first, so that the kubelet unregisters the driver.
	registration.stop()
	server.GracefulStop()
	_ = os.Remove(*endpoint)
}

// listenUnix listens on a unix socket at path, replacing a stale socket left by an earlier run.
func listenUnix(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, err
	}
	if info, err := os.Lstat(path); err == nil && info.Mode()&os.ModeSocket != 0 {
		if err := os.Remove(path); err != nil {
			return nil, err
		}
	}
	return net.Listen("unix", path)
}

func logCalls(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	resp, err := handler(ctx, req)
	switch info.FullMethod {
	case "/csi.v1.Identity/Probe", "/csi.v1.Identity/GetPluginInfo", "/csi.v1.Identity/GetPluginCapabilities",
		"/csi.v1.Controller/ControllerGetCapabilities", "/csi.v1.Node/NodeGetCapabilities":
		if err == nil {
			return resp, err
		}
	}
	if err != nil {
		log.Printf("%s %v: error: %v", info.FullMethod, req, err)
	} else {
		log.Printf("%s %v: ok %v", info.FullMethod, req, resp)
	}
	return resp, err
}
