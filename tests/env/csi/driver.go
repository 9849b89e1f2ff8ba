package main

// The CSI services: Identity, Controller (volumes, clones, snapshots) and Node (publish by bind
// mount; no staging). One lock serializes them: the test environment asks little of it, and every
// operation is then consistent with the files on disk.

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// defaultCapacity is what a volume gets when the request names no size.
const defaultCapacity = 1 << 30

type driver struct {
	csi.UnimplementedIdentityServer
	csi.UnimplementedControllerServer
	csi.UnimplementedNodeServer

	name        string
	nodeID      string
	kubeletRoot string
	store       *store
	mu          sync.Mutex
}

func internal(format string, args ...any) error {
	return status.Errorf(codes.Internal, format, args...)
}

// --- Identity

func (d *driver) GetPluginInfo(context.Context, *csi.GetPluginInfoRequest) (*csi.GetPluginInfoResponse, error) {
	return &csi.GetPluginInfoResponse{Name: d.name, VendorVersion: version}, nil
}

func (d *driver) GetPluginCapabilities(context.Context, *csi.GetPluginCapabilitiesRequest) (*csi.GetPluginCapabilitiesResponse, error) {
	return &csi.GetPluginCapabilitiesResponse{Capabilities: []*csi.PluginCapability{{
		Type: &csi.PluginCapability_Service_{Service: &csi.PluginCapability_Service{Type: csi.PluginCapability_Service_CONTROLLER_SERVICE}},
	}}}, nil
}

func (d *driver) Probe(context.Context, *csi.ProbeRequest) (*csi.ProbeResponse, error) {
	return &csi.ProbeResponse{Ready: wrapperspb.Bool(true)}, nil
}

// --- Controller

func (d *driver) ControllerGetCapabilities(context.Context, *csi.ControllerGetCapabilitiesRequest) (*csi.ControllerGetCapabilitiesResponse, error) {
	var caps []*csi.ControllerServiceCapability
	for _, c := range []csi.ControllerServiceCapability_RPC_Type{
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME,
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_SNAPSHOT,
		csi.ControllerServiceCapability_RPC_LIST_SNAPSHOTS,
		csi.ControllerServiceCapability_RPC_CLONE_VOLUME,
	} {
		caps = append(caps, &csi.ControllerServiceCapability{
			Type: &csi.ControllerServiceCapability_Rpc{Rpc: &csi.ControllerServiceCapability_RPC{Type: c}},
		})
	}
	return &csi.ControllerGetCapabilitiesResponse{Capabilities: caps}, nil
}

// checkCapabilities accepts single-node access, as a mount or a block device, and says which.
func checkCapabilities(caps []*csi.VolumeCapability) (block bool, err error) {
	if len(caps) == 0 {
		return false, status.Error(codes.InvalidArgument, "no volume capabilities")
	}
	mount := false
	for _, c := range caps {
		switch c.GetAccessType().(type) {
		case *csi.VolumeCapability_Block:
			block = true
		case *csi.VolumeCapability_Mount:
			mount = true
		default:
			return false, status.Error(codes.InvalidArgument, "access type neither block nor mount")
		}
		switch c.GetAccessMode().GetMode() {
		case csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER, csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY,
			csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER, csi.VolumeCapability_AccessMode_SINGLE_NODE_MULTI_WRITER,
			// One node only: every node of the test environment is this one.
			csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY, csi.VolumeCapability_AccessMode_MULTI_NODE_SINGLE_WRITER,
			csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER:
		default:
			return false, status.Errorf(codes.InvalidArgument, "unsupported access mode %v", c.GetAccessMode().GetMode())
		}
	}
	if block && mount {
		return false, status.Error(codes.InvalidArgument, "a volume is either a block device or a filesystem, not both")
	}
	return block, nil
}

func volumeResponse(m *volumeMeta, source *csi.VolumeContentSource) *csi.CreateVolumeResponse {
	return &csi.CreateVolumeResponse{Volume: &csi.Volume{
		VolumeId:      m.ID,
		CapacityBytes: m.CapacityBytes,
		ContentSource: source,
		VolumeContext: map[string]string{"block": strconv.FormatBool(m.Block)},
	}}
}

func (d *driver) CreateVolume(_ context.Context, req *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error) {
	if req.GetName() == "" {
		return nil, status.Error(codes.InvalidArgument, "no name")
	}
	block, err := checkCapabilities(req.GetVolumeCapabilities())
	if err != nil {
		return nil, err
	}
	capacity := req.GetCapacityRange().GetRequiredBytes()
	if limit := req.GetCapacityRange().GetLimitBytes(); capacity == 0 && limit > 0 {
		capacity = min(limit, defaultCapacity)
	}
	if capacity == 0 {
		capacity = defaultCapacity
	}
	d.mu.Lock()
	defer d.mu.Unlock()

	id := idFor("vol", req.GetName())
	if existing, err := d.store.getVolume(id); err != nil {
		return nil, internal("reading volume %s: %v", id, err)
	} else if existing != nil {
		if existing.Name != req.GetName() || existing.Block != block || existing.CapacityBytes < capacity {
			return nil, status.Errorf(codes.AlreadyExists, "volume %s exists with other parameters", req.GetName())
		}
		return volumeResponse(existing, req.GetVolumeContentSource()), nil
	}

	m := &volumeMeta{ID: id, Name: req.GetName(), CapacityBytes: capacity, Block: block, CreatedUnix: time.Now().Unix()}
	// The data's source: a snapshot, another volume, or nothing.
	var source string
	switch {
	case req.GetVolumeContentSource().GetSnapshot() != nil:
		snapID := req.GetVolumeContentSource().GetSnapshot().GetSnapshotId()
		snap, err := d.store.getSnapshot(snapID)
		if err != nil || snap == nil {
			return nil, status.Errorf(codes.NotFound, "snapshot %q not found (%v)", snapID, err)
		}
		if snap.Block != block {
			return nil, status.Errorf(codes.InvalidArgument, "snapshot %s is of a %s volume", snapID, kind(snap.Block))
		}
		if snap.SizeBytes > capacity {
			return nil, status.Errorf(codes.OutOfRange, "snapshot %s holds %d bytes, more than the %d asked", snapID, snap.SizeBytes, capacity)
		}
		m.SourceSnapshot = snapID
		source = volumeData(d.store.snapshotDir(snapID), block)
	case req.GetVolumeContentSource().GetVolume() != nil:
		srcID := req.GetVolumeContentSource().GetVolume().GetVolumeId()
		src, err := d.store.getVolume(srcID)
		if err != nil || src == nil {
			return nil, status.Errorf(codes.NotFound, "volume %q not found (%v)", srcID, err)
		}
		if src.Block != block {
			return nil, status.Errorf(codes.InvalidArgument, "volume %s is a %s volume", srcID, kind(src.Block))
		}
		if src.CapacityBytes > capacity {
			return nil, status.Errorf(codes.OutOfRange, "volume %s holds %d bytes, more than the %d asked", srcID, src.CapacityBytes, capacity)
		}
		m.SourceVolume = srcID
		source = volumeData(d.store.volumeDir(srcID), block)
		if block {
			if err := flushLoops(source); err != nil {
				return nil, internal("%v", err)
			}
		}
	}

	tmp, err := d.store.newTmp()
	if err != nil {
		return nil, internal("%v", err)
	}
	data := volumeData(tmp, block)
	if err := makeData(source, data, block, capacity); err != nil {
		_ = os.RemoveAll(tmp)
		return nil, internal("%v", err)
	}
	if err := writeJSON(filepath.Join(tmp, metaFile), m); err != nil {
		_ = os.RemoveAll(tmp)
		return nil, internal("%v", err)
	}
	if err := commit(tmp, d.store.volumeDir(id)); err != nil {
		return nil, internal("%v", err)
	}
	return volumeResponse(m, req.GetVolumeContentSource()), nil
}

func kind(block bool) string {
	if block {
		return "block"
	}
	return "filesystem"
}

// makeData makes a volume's data at path: a copy of source when given, else empty. A block volume is
// a sparse file of exactly the capacity asked (a copy is grown to it).
func makeData(source, path string, block bool, capacity int64) error {
	if source != "" {
		if err := copyData(source, path); err != nil {
			return err
		}
	} else if block {
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return err
		}
		if err := f.Close(); err != nil {
			return err
		}
	} else {
		return os.Mkdir(path, 0o777) // as a fresh filesystem's root: any pod user may write
	}
	if block {
		info, err := os.Stat(path)
		if err != nil {
			return err
		}
		if info.Size() < capacity {
			return os.Truncate(path, capacity)
		}
	} else if source == "" {
		return os.Chmod(path, 0o777)
	}
	return nil
}

func (d *driver) DeleteVolume(_ context.Context, req *csi.DeleteVolumeRequest) (*csi.DeleteVolumeResponse, error) {
	id := req.GetVolumeId()
	if id == "" {
		return nil, status.Error(codes.InvalidArgument, "no volume id")
	}
	if checkID(id) != nil {
		// Not one of ours, so it does not exist: deleting it succeeds.
		return &csi.DeleteVolumeResponse{}, nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	m, err := d.store.getVolume(id)
	if err != nil {
		return nil, internal("%v", err)
	}
	dir := d.store.volumeDir(id)
	if m != nil {
		// Publications whose mount is gone (the node was stopped and cleaned up meanwhile) no
		// longer count.
		var live []string
		for _, p := range m.Published {
			if mounted, err := isMountPoint(p); err != nil || mounted {
				live = append(live, p)
			}
		}
		m.Published = live
		if len(m.Published) > 0 {
			return nil, status.Errorf(codes.FailedPrecondition, "volume %s is still published at %s", id, strings.Join(m.Published, ", "))
		}
		if m.Block {
			if err := detachLoops(volumeData(dir, true)); err != nil {
				return nil, internal("%v", err)
			}
		}
	}
	if err := d.store.remove(dir); err != nil {
		return nil, internal("deleting volume %s: %v", id, err)
	}
	return &csi.DeleteVolumeResponse{}, nil
}

func (d *driver) ValidateVolumeCapabilities(_ context.Context, req *csi.ValidateVolumeCapabilitiesRequest) (*csi.ValidateVolumeCapabilitiesResponse, error) {
	d.mu.Lock()
	m, err := d.store.getVolume(req.GetVolumeId())
	d.mu.Unlock()
	if err != nil || m == nil {
		return nil, status.Errorf(codes.NotFound, "volume %q not found", req.GetVolumeId())
	}
	block, err := checkCapabilities(req.GetVolumeCapabilities())
	if err != nil || block != m.Block {
		return &csi.ValidateVolumeCapabilitiesResponse{Message: fmt.Sprintf("volume %s is a %s volume", m.ID, kind(m.Block))}, nil
	}
	return &csi.ValidateVolumeCapabilitiesResponse{Confirmed: &csi.ValidateVolumeCapabilitiesResponse_Confirmed{
		VolumeContext: req.GetVolumeContext(), VolumeCapabilities: req.GetVolumeCapabilities(), Parameters: req.GetParameters(),
	}}, nil
}

func snapshotProto(m *snapshotMeta) *csi.Snapshot {
	return &csi.Snapshot{
		SnapshotId:     m.ID,
		SourceVolumeId: m.SourceVolumeID,
		SizeBytes:      m.SizeBytes,
		CreationTime:   &timestamppb.Timestamp{Seconds: m.CreatedUnix, Nanos: m.CreatedNanos},
		// Snapshots are copies made before CreateSnapshot returns: ready once they exist.
		ReadyToUse: true,
	}
}

func (d *driver) CreateSnapshot(_ context.Context, req *csi.CreateSnapshotRequest) (*csi.CreateSnapshotResponse, error) {
	if req.GetName() == "" || req.GetSourceVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "a snapshot needs a name and a source volume")
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	id := idFor("snap", req.GetName())
	if existing, err := d.store.getSnapshot(id); err != nil {
		return nil, internal("%v", err)
	} else if existing != nil {
		if existing.Name != req.GetName() || existing.SourceVolumeID != req.GetSourceVolumeId() {
			return nil, status.Errorf(codes.AlreadyExists, "snapshot %s exists, of another volume", req.GetName())
		}
		return &csi.CreateSnapshotResponse{Snapshot: snapshotProto(existing)}, nil
	}
	vol, err := d.store.getVolume(req.GetSourceVolumeId())
	if err != nil || vol == nil {
		return nil, status.Errorf(codes.NotFound, "volume %q not found (%v)", req.GetSourceVolumeId(), err)
	}
	source := volumeData(d.store.volumeDir(vol.ID), vol.Block)
	if vol.Block {
		if err := flushLoops(source); err != nil {
			return nil, internal("%v", err)
		}
	} else {
		// What the pods wrote and the kernel has not yet written back is copied all the same (the
		// copy reads the page cache); syncing the filesystem makes the snapshot as durable as its
		// source.
		unix.Sync()
	}
	tmp, err := d.store.newTmp()
	if err != nil {
		return nil, internal("%v", err)
	}
	if err := copyData(source, volumeData(tmp, vol.Block)); err != nil {
		_ = os.RemoveAll(tmp)
		return nil, internal("%v", err)
	}
	now := time.Now()
	m := &snapshotMeta{ID: id, Name: req.GetName(), SourceVolumeID: vol.ID, SizeBytes: vol.CapacityBytes, Block: vol.Block,
		CreatedUnix: now.Unix(), CreatedNanos: int32(now.Nanosecond())}
	if err := writeJSON(filepath.Join(tmp, metaFile), m); err != nil {
		_ = os.RemoveAll(tmp)
		return nil, internal("%v", err)
	}
	if err := commit(tmp, d.store.snapshotDir(id)); err != nil {
		return nil, internal("%v", err)
	}
	return &csi.CreateSnapshotResponse{Snapshot: snapshotProto(m)}, nil
}

func (d *driver) DeleteSnapshot(_ context.Context, req *csi.DeleteSnapshotRequest) (*csi.DeleteSnapshotResponse, error) {
	id := req.GetSnapshotId()
	if id == "" {
		return nil, status.Error(codes.InvalidArgument, "no snapshot id")
	}
	if checkID(id) != nil {
		return &csi.DeleteSnapshotResponse{}, nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.store.remove(d.store.snapshotDir(id)); err != nil {
		return nil, internal("deleting snapshot %s: %v", id, err)
	}
	return &csi.DeleteSnapshotResponse{}, nil
}

func (d *driver) ListSnapshots(_ context.Context, req *csi.ListSnapshotsRequest) (*csi.ListSnapshotsResponse, error) {
	d.mu.Lock()
	all, err := d.store.listSnapshots()
	d.mu.Unlock()
	if err != nil {
		return nil, internal("%v", err)
	}
	var matching []*snapshotMeta
	for _, m := range all {
		if (req.GetSnapshotId() == "" || m.ID == req.GetSnapshotId()) &&
			(req.GetSourceVolumeId() == "" || m.SourceVolumeID == req.GetSourceVolumeId()) {
			matching = append(matching, m)
		}
	}
	start := 0
	if token := req.GetStartingToken(); token != "" {
		n, err := strconv.Atoi(token)
		if err != nil || n < 0 || n > len(matching) {
			return nil, status.Errorf(codes.Aborted, "invalid starting token %q", token)
		}
		start = n
	}
	end := len(matching)
	if max := int(req.GetMaxEntries()); max > 0 && start+max < end {
		end = start + max
	}
	resp := &csi.ListSnapshotsResponse{}
	for _, m := range matching[start:end] {
		resp.Entries = append(resp.Entries, &csi.ListSnapshotsResponse_Entry{Snapshot: snapshotProto(m)})
	}
	if end < len(matching) {
		resp.NextToken = strconv.Itoa(end)
	}
	return resp, nil
}

// --- Node

func (d *driver) NodeGetInfo(context.Context, *csi.NodeGetInfoRequest) (*csi.NodeGetInfoResponse, error) {
	return &csi.NodeGetInfoResponse{NodeId: d.nodeID}, nil
}

func (d *driver) NodeGetCapabilities(context.Context, *csi.NodeGetCapabilitiesRequest) (*csi.NodeGetCapabilitiesResponse, error) {
	return &csi.NodeGetCapabilitiesResponse{}, nil
}

// checkTarget accepts only a target path under the kubelet's root, also once the symbolic links of
// its parent are resolved. A target whose parent is gone is accepted for unpublishing (there is
// nothing left to unpublish), never for publishing.
func (d *driver) checkTarget(target string, publishing bool) (string, error) {
	if target == "" || !filepath.IsAbs(target) {
		return "", status.Errorf(codes.InvalidArgument, "target path %q is not absolute", target)
	}
	clean := filepath.Clean(target)
	under := func(p string) bool { return strings.HasPrefix(p, d.kubeletRoot+"/") }
	if !under(clean) {
		return "", status.Errorf(codes.InvalidArgument, "target path %s is outside the kubelet's root %s", target, d.kubeletRoot)
	}
	parent, err := filepath.EvalSymlinks(filepath.Dir(clean))
	if err != nil && os.IsNotExist(err) && !publishing {
		return clean, nil
	}
	if err != nil {
		return "", status.Errorf(codes.InvalidArgument, "target path %s: %v", target, err)
	}
	if parent != d.kubeletRoot && !under(parent) {
		return "", status.Errorf(codes.InvalidArgument, "target path %s leads outside the kubelet's root %s", target, d.kubeletRoot)
	}
	return filepath.Join(parent, filepath.Base(clean)), nil
}

func (d *driver) NodePublishVolume(_ context.Context, req *csi.NodePublishVolumeRequest) (*csi.NodePublishVolumeResponse, error) {
	target, err := d.checkTarget(req.GetTargetPath(), true)
	if err != nil {
		return nil, err
	}
	block, err := checkCapabilities([]*csi.VolumeCapability{req.GetVolumeCapability()})
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	m, err := d.store.getVolume(req.GetVolumeId())
	if err != nil || m == nil {
		return nil, status.Errorf(codes.NotFound, "volume %q not found", req.GetVolumeId())
	}
	if m.Block != block {
		return nil, status.Errorf(codes.InvalidArgument, "volume %s is a %s volume", m.ID, kind(m.Block))
	}
	mounted, err := isMountPoint(target)
	if err != nil {
		return nil, internal("%v", err)
	}
	if !mounted {
		data := volumeData(d.store.volumeDir(m.ID), m.Block)
		source := data
		if m.Block {
			if source, err = attachLoop(data); err != nil {
				return nil, internal("%v", err)
			}
			// The kubelet makes the parent; the target is a file to bind the device onto.
			f, err := os.OpenFile(target, os.O_WRONLY|os.O_CREATE, 0o600)
			if err != nil {
				return nil, internal("%v", err)
			}
			f.Close()
		} else if err := os.MkdirAll(target, 0o750); err != nil {
			return nil, internal("%v", err)
		}
		if err := bindMount(source, target, req.GetReadonly()); err != nil {
			return nil, internal("%v", err)
		}
	}
	if !contains(m.Published, target) {
		m.Published = append(m.Published, target)
		if err := d.store.saveVolume(m); err != nil {
			return nil, internal("%v", err)
		}
	}
	return &csi.NodePublishVolumeResponse{}, nil
}

func contains(list []string, s string) bool {
	for _, e := range list {
		if e == s {
			return true
		}
	}
	return false
}

func (d *driver) NodeUnpublishVolume(_ context.Context, req *csi.NodeUnpublishVolumeRequest) (*csi.NodeUnpublishVolumeResponse, error) {
	target, err := d.checkTarget(req.GetTargetPath(), false)
	if err != nil {
		return nil, err
	}
	if checkID(req.GetVolumeId()) != nil {
		return nil, status.Errorf(codes.NotFound, "volume %q not found", req.GetVolumeId())
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for {
		mounted, err := isMountPoint(target)
		if err != nil {
			return nil, internal("%v", err)
		}
		if !mounted {
			break
		}
		if err := unix.Unmount(target, 0); err != nil {
			return nil, internal("unmounting %s: %v", target, err)
		}
	}
	// The mount point itself (a directory, or the file a block device was bound to); never what a
	// symbolic link there points at.
	if err := os.Remove(target); err != nil && !os.IsNotExist(err) {
		return nil, internal("removing %s: %v", target, err)
	}
	m, err := d.store.getVolume(req.GetVolumeId())
	if err != nil {
		return nil, internal("%v", err)
	}
	if m == nil {
		return &csi.NodeUnpublishVolumeResponse{}, nil
	}
	var kept []string
	for _, p := range m.Published {
		if p != target {
			kept = append(kept, p)
		}
	}
	m.Published = kept
	if err := d.store.saveVolume(m); err != nil {
		return nil, internal("%v", err)
	}
	if m.Block && len(kept) == 0 {
		if err := detachLoops(volumeData(d.store.volumeDir(m.ID), true)); err != nil {
			return nil, internal("%v", err)
		}
	}
	return &csi.NodeUnpublishVolumeResponse{}, nil
}
