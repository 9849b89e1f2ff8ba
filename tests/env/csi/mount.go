package main

// Mounts and loop devices, through the kernel's mount table and util-linux's losetup.

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// unescapeMountinfo undoes the octal escapes of /proc/self/mountinfo (\040 for a space...).
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// isMountPoint tells whether something is mounted at path (exactly).
func isMountPoint(path string) (bool, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return false, err
	}
	defer f.Close()
	scanner := bufio.NewScanner(f)
	scanner.Buffer(make([]byte, 64*1024), 1024*1024)
	for scanner.Scan() {
		fields := strings.Fields(scanner.Text())
		if len(fields) > 4 && unescapeMountinfo(fields[4]) == path {
			return true, nil
		}
	}
	return false, scanner.Err()
}

func bindMount(source, target string, readOnly bool) error {
	if err := unix.Mount(source, target, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind mount %s on %s: %w", source, target, err)
	}
	if readOnly {
		if err := unix.Mount("", target, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
			_ = unix.Unmount(target, 0)
			return fmt.Errorf("remount %s read-only: %w", target, err)
		}
	}
	return nil
}

func losetup(args ...string) (string, error) {
	out, err := exec.Command("losetup", args...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("losetup %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return strings.TrimSpace(string(out)), nil
}

// loopDevicesOf lists the loop devices attached to file.
func loopDevicesOf(file string) ([]string, error) {
	out, err := losetup("--noheadings", "--output", "NAME", "--associated", file)
	if err != nil {
		return nil, err
	}
	return strings.Fields(out), nil
}

// attachLoop returns the loop device of file, attaching one when there is none.
func attachLoop(file string) (string, error) {
	devices, err := loopDevicesOf(file)
	if err != nil {
		return "", err
	}
	if len(devices) > 0 {
		return devices[0], nil
	}
	return losetup("--find", "--show", file)
}

// detachLoops detaches every loop device of file, after flushing what was written through it.
func detachLoops(file string) error {
	devices, err := loopDevicesOf(file)
	if err != nil {
		return err
	}
	for _, dev := range devices {
		if _, err := losetup("--detach", dev); err != nil {
			return err
		}
	}
	return nil
}

// flushLoops makes what was written through file's loop devices visible in file.
func flushLoops(file string) error {
	devices, err := loopDevicesOf(file)
	if err != nil {
		return err
	}
	for _, dev := range devices {
		f, err := os.OpenFile(dev, os.O_RDONLY, 0)
		if err != nil {
			return err
		}
		err = f.Sync()
		f.Close()
		if err != nil {
			return fmt.Errorf("flushing %s: %w", dev, err)
		}
	}
	return nil
}
