package main

import (
	"os"
	"path/filepath"
	"testing"
)

func TestIDsAreOnePathComponent(t *testing.T) {
	for _, id := range []string{"pvc-0a1b", "snapshot-x.y_z"} {
		if err := checkID(id); err != nil {
			t.Errorf("%q refused: %v", id, err)
		}
	}
	for _, id := range []string{"", ".", "..", "../x", "a/b", "a/../b", "-x", ".hidden", "a..b", "x\x00"} {
		if checkID(id) == nil {
			t.Errorf("%q accepted", id)
		}
	}
	if got := idFor("vol", "../../etc"); checkID(got) != nil {
		t.Errorf("idFor gave an invalid id %q", got)
	}
	if idFor("vol", "a/b") != idFor("vol", "a/b") {
		t.Error("idFor is not stable")
	}
}

func TestTargetsStayUnderTheKubeletRoot(t *testing.T) {
	root := t.TempDir()
	outside := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "pods", "p"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(root, "pods", "escape")); err != nil {
		t.Fatal(err)
	}
	d := &driver{kubeletRoot: root}
	if _, err := d.checkTarget(filepath.Join(root, "pods", "p", "mount"), true); err != nil {
		t.Errorf("a target under the root refused: %v", err)
	}
	for _, target := range []string{
		"relative/path",
		root,
		filepath.Join(root, "..", "x"),
		filepath.Join(outside, "mount"),
		filepath.Join(root, "pods", "escape", "mount"),
	} {
		if _, err := d.checkTarget(target, true); err == nil {
			t.Errorf("%s accepted for publishing", target)
		}
		if _, err := d.checkTarget(target, false); err == nil {
			t.Errorf("%s accepted for unpublishing", target)
		}
	}
	// Gone already: nothing to unpublish, but nothing to publish into either.
	gone := filepath.Join(root, "pods", "gone", "mount")
	if _, err := d.checkTarget(gone, false); err != nil {
		t.Errorf("unpublishing a target whose parent is gone: %v", err)
	}
	if _, err := d.checkTarget(gone, true); err == nil {
		t.Error("publishing a target whose parent is gone was accepted")
	}
}

func TestMountinfoEscapes(t *testing.T) {
	if got := unescapeMountinfo(`/var/lib/a\040b\134c`); got != `/var/lib/a b\c` {
		t.Errorf("got %q", got)
	}
}
