package main

// What node-driver-registrar does for a CSI driver, in the driver itself: serve the kubelet's plugin
// registration API (k8s.io/kubelet/pkg/apis/pluginregistration/v1) on a socket in the kubelet's
// plugins_registry directory. The kubelet finds the socket, asks GetInfo for the driver's name, its
// CSI endpoint and the versions it speaks, registers the driver (NodeGetInfo, the CSINode object)
// and reports the outcome with NotifyRegistrationStatus. Removing the socket unregisters it.

import (
	"context"
	"log"
	"os"
	"path/filepath"

	"google.golang.org/grpc"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

type registrar struct {
	registerapi.UnimplementedRegistrationServer
	driverName string
	endpoint   string
	socket     string
	server     *grpc.Server
}

func startRegistration(dir, driverName, endpoint string) (*registrar, error) {
	r := &registrar{driverName: driverName, endpoint: endpoint, socket: filepath.Join(dir, driverName+"-reg.sock")}
	listener, err := listenUnix(r.socket)
	if err != nil {
		return nil, err
	}
	r.server = grpc.NewServer()
	registerapi.RegisterRegistrationServer(r.server, r)
	go func() {
		if err := r.server.Serve(listener); err != nil {
			log.Printf("registration server: %v", err)
		}
	}()
	log.Printf("registration socket for the kubelet: %s", r.socket)
	return r, nil
}

func (r *registrar) GetInfo(context.Context, *registerapi.InfoRequest) (*registerapi.PluginInfo, error) {
	log.Printf("kubelet asked for the plugin's info")
	return &registerapi.PluginInfo{
		Type:              registerapi.CSIPlugin,
		Name:              r.driverName,
		Endpoint:          r.endpoint,
		SupportedVersions: []string{"1.0.0"},
	}, nil
}

func (r *registrar) NotifyRegistrationStatus(_ context.Context, status *registerapi.RegistrationStatus) (*registerapi.RegistrationStatusResponse, error) {
	if status.PluginRegistered {
		log.Printf("registered with the kubelet")
	} else {
		// node-driver-registrar exits here so that it is restarted; the kubelet retries on its own
		// as long as the socket is there, so the error is only logged.
		log.Printf("the kubelet did not register the driver: %s", status.Error)
	}
	return &registerapi.RegistrationStatusResponse{}, nil
}

func (r *registrar) stop() {
	_ = os.Remove(r.socket)
	r.server.Stop()
}
