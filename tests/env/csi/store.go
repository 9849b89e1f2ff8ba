package main

// The driver's state: one directory per volume and per snapshot, each with its metadata as JSON
// beside its data (a directory "data" for a filesystem volume, a file "disk.img" for a block one).
// New entries are built in tmp/ and renamed into place, so a crash never leaves a half-made volume
// or snapshot where it looks finished.

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
)

type volumeMeta struct {
	ID            string `json:"id"`
	Name          string `json:"name"`
	CapacityBytes int64  `json:"capacityBytes"`
	Block         bool   `json:"block"`
	// What it was made from, if anything: a snapshot or a volume (clone).
	SourceSnapshot string `json:"sourceSnapshot,omitempty"`
	SourceVolume   string `json:"sourceVolume,omitempty"`
	CreatedUnix    int64  `json:"createdUnix"`
	// The kubelet's target paths it is published to.
	Published []string `json:"published,omitempty"`
}

type snapshotMeta struct {
	ID             string `json:"id"`
	Name           string `json:"name"`
	SourceVolumeID string `json:"sourceVolumeId"`
	SizeBytes      int64  `json:"sizeBytes"`
	Block          bool   `json:"block"`
	CreatedUnix    int64  `json:"createdUnix"`
	CreatedNanos   int32  `json:"createdNanos"`
}

const (
	metaFile  = "meta.json"
	dataDir   = "data"
	blockFile = "disk.img"
)

type store struct{ root string }

func openStore(root string) (*store, error) {
	s := &store{root: root}
	for _, dir := range []string{"volumes", "snapshots", "tmp"} {
		if err := os.MkdirAll(filepath.Join(root, dir), 0o700); err != nil {
			return nil, err
		}
	}
	// Whatever an interrupted creation left behind.
	entries, err := os.ReadDir(filepath.Join(root, "tmp"))
	if err != nil {
		return nil, err
	}
	for _, e := range entries {
		if err := os.RemoveAll(filepath.Join(root, "tmp", e.Name())); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// An id is one path component of letters, digits, '.', '_' and '-', starting with a letter or
// digit: never a separator, never "." or "..".
var validID = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

func checkID(id string) error {
	if !validID.MatchString(id) || strings.Contains(id, "..") {
		return fmt.Errorf("invalid id %q", id)
	}
	return nil
}

// idFor is the id of the volume or snapshot created under a CO's name: the name itself when it is a
// valid id (the provisioner's pvc-<uid>, the snapshotter's snapshot-<uid>), else a hash of it. The
// same name always gives the same id, which makes creation idempotent.
func idFor(prefix, name string) string {
	if checkID(name) == nil {
		return name
	}
	sum := sha256.Sum256([]byte(name))
	return prefix + "-" + hex.EncodeToString(sum[:16])
}

func (s *store) volumeDir(id string) string   { return filepath.Join(s.root, "volumes", id) }
func (s *store) snapshotDir(id string) string { return filepath.Join(s.root, "snapshots", id) }

// volumeData is the directory or the block file of a volume (or, with snapshotDir, a snapshot).
func volumeData(dir string, block bool) string {
	if block {
		return filepath.Join(dir, blockFile)
	}
	return filepath.Join(dir, dataDir)
}

func readJSON(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}

// writeJSON replaces path atomically.
func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(append(b, '\n')); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// getVolume returns nil, nil when there is no such volume.
func (s *store) getVolume(id string) (*volumeMeta, error) {
	if err := checkID(id); err != nil {
		return nil, err
	}
	var m volumeMeta
	err := readJSON(filepath.Join(s.volumeDir(id), metaFile), &m)
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return &m, nil
}

func (s *store) saveVolume(m *volumeMeta) error {
	return writeJSON(filepath.Join(s.volumeDir(m.ID), metaFile), m)
}

func (s *store) getSnapshot(id string) (*snapshotMeta, error) {
	if err := checkID(id); err != nil {
		return nil, err
	}
	var m snapshotMeta
	err := readJSON(filepath.Join(s.snapshotDir(id), metaFile), &m)
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return &m, nil
}

func (s *store) listSnapshots() ([]*snapshotMeta, error) {
	entries, err := os.ReadDir(filepath.Join(s.root, "snapshots"))
	if err != nil {
		return nil, err
	}
	var out []*snapshotMeta
	for _, e := range entries {
		if checkID(e.Name()) != nil {
			continue
		}
		m, err := s.getSnapshot(e.Name())
		if err != nil {
			return nil, err
		}
		if m != nil {
			out = append(out, m)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// newTmp is a fresh directory under tmp/ to build an entry in.
func (s *store) newTmp() (string, error) {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	dir := filepath.Join(s.root, "tmp", hex.EncodeToString(b[:]))
	return dir, os.Mkdir(dir, 0o700)
}

// commit moves a finished entry built in tmp into place.
func commit(tmp, dir string) error {
	if err := os.Rename(tmp, dir); err != nil {
		_ = os.RemoveAll(tmp)
		return err
	}
	return nil
}

// remove deletes an entry. os.RemoveAll never follows symbolic links: a link inside a volume (or
// the entry itself, were it one) is removed, not what it points at.
func (s *store) remove(dir string) error { return os.RemoveAll(dir) }

// copyData copies a volume's data (a directory tree or a block file) to dst, which must not exist:
// modes, owners, timestamps, hard links, extended attributes and sparseness are kept (GNU cp -a;
// symbolic links are copied as links).
func copyData(src, dst string) error {
	out, err := exec.Command("cp", "-a", "--sparse=always", "--no-target-directory", "--", src, dst).CombinedOutput()
	if err != nil {
		return fmt.Errorf("cp -a %s %s: %v: %s", src, dst, err, strings.TrimSpace(string(out)))
	}
	return nil
}
