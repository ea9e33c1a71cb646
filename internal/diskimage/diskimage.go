// Package diskimage makes ext4 disk images from directories with e2fsprogs'
// `mkfs.ext4 -d` (what `popvmm disk pack` runs): the image is sized from
// the directory's content with headroom, written beside its final name and
// renamed into place only when mkfs.ext4 and e2fsck are satisfied.
package diskimage

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
)

// Options adjust Pack.
type Options struct {
	// Size is the image's size in bytes; 0 sizes it from the content
	// (Estimate). It is rounded up to a MiB.
	Size uint64
	// Label is the file system's label (at most 16 bytes); "" leaves none.
	Label string
	// Force replaces an existing image.
	Force bool
}

// Result is what Pack made.
type Result struct {
	Image   string
	Size    uint64 // bytes, a multiple of 1 MiB
	Content Content
}

// Content is what a directory holds, as an ext4 file system with 4 KiB
// blocks stores it.
type Content struct {
	Files  uint64 // every entry below and including the directory itself
	Blocks uint64 // 4 KiB blocks of file data, directories and long symlinks
}

const (
	blockSize  = 4096
	inodeSize  = 256
	mib        = 1 << 20
	maxLabel   = 16
	inlineLink = 60 // a symlink target up to this long lives in the inode
)

// Scan walks dir and counts what an ext4 image of it must hold. An entry
// it cannot read is an error naming it.
func Scan(dir string) (Content, error) {
	var c Content
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		c.Files++
		switch {
		case info.Mode().IsRegular():
			if f, err := os.Open(path); err != nil {
				return err // mkfs.ext4 must read it; say which one it cannot
			} else {
				f.Close()
			}
			n := blocksFor(uint64(info.Size()))
			// An extent tree block for every 128 MiB (a fragmented
			// large file needs more than the inode's four extents).
			c.Blocks += n + n/(128*mib/blockSize)
		case info.IsDir():
			entries, err := os.ReadDir(path)
			if err != nil {
				return err
			}
			var bytes uint64 = 24 // "." and ".."
			for _, e := range entries {
				bytes += 8 + (uint64(len(e.Name()))+3)&^3
			}
			c.Blocks += blocksFor(bytes) + 1 // one spare: the hash tree's root
		case info.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(path)
			if err != nil {
				return err
			}
			if len(target) > inlineLink {
				c.Blocks++
			}
		}
		return nil
	})
	return c, err
}

func blocksFor(n uint64) uint64 { return (n + blockSize - 1) / blockSize }

// Inodes is the inode count Pack asks mkfs.ext4 for: every entry and a
// quarter more, so files can be added to an image attached writable.
func (c Content) Inodes() uint64 { return c.Files + c.Files/4 + 256 }

// journal is the journal Pack gives an image of about size bytes: 4 MiB
// for small images, as mke2fs does, 32 MiB from 512 MiB up.
func journal(size uint64) uint64 {
	if size < 512*mib {
		return 4 * mib
	}
	return 32 * mib
}

// Estimate is the size Pack gives an image of c: the content's blocks and
// a fifth more, the inode tables, 16 MiB for the file system's own
// metadata and spare room, and the journal, rounded up to a MiB.
func Estimate(c Content) uint64 {
	size := c.Blocks*blockSize*6/5 + c.Inodes()*inodeSize + 16*mib
	size += journal(size)
	return roundMiB(size)
}

func roundMiB(n uint64) uint64 { return (n + mib - 1) / mib * mib }

// Pack makes image, an ext4 file system holding dir's tree (owners, modes,
// symlinks, extended attributes as mkfs.ext4 -d copies them).
func Pack(dir, image string, o Options) (*Result, error) {
	info, err := os.Stat(dir)
	switch {
	case err != nil:
		return nil, err
	case !info.IsDir():
		return nil, fmt.Errorf("%s: not a directory", dir)
	}
	if len(o.Label) > maxLabel {
		return nil, fmt.Errorf("label %q: longer than %d bytes", o.Label, maxLabel)
	}
	if _, err := os.Lstat(image); err == nil && !o.Force {
		return nil, fmt.Errorf("%s: already exists (--force replaces it)", image)
	}
	if abs, err := filepath.Abs(image); err == nil {
		if d, err := filepath.Abs(dir); err == nil && strings.HasPrefix(abs, d+string(filepath.Separator)) {
			return nil, fmt.Errorf("%s: inside %s, the directory being packed", image, dir)
		}
	}
	if info, err := os.Stat(filepath.Dir(image)); err != nil {
		return nil, fmt.Errorf("%s: %w", image, err)
	} else if !info.IsDir() {
		return nil, fmt.Errorf("%s: %s is not a directory", image, filepath.Dir(image))
	}
	mkfs, err := exec.LookPath("mkfs.ext4")
	if err != nil {
		return nil, fmt.Errorf("mkfs.ext4 not found (Debian: apt-get install e2fsprogs): %w", err)
	}
	c, err := Scan(dir)
	if err != nil {
		return nil, err
	}
	size := Estimate(c)
	if o.Size != 0 {
		size = roundMiB(o.Size)
		// A size the content cannot fit is refused here rather than by
		// mkfs.ext4 half-way through copying.
		if need := c.Blocks*blockSize + c.Inodes()*inodeSize + journal(size) + 2*mib; size < need {
			return nil, fmt.Errorf("size %d MiB: %s needs at least %d MiB", size/mib, dir, roundMiB(need)/mib)
		}
	}

	tmp := image + ".tmp"
	os.Remove(tmp)
	args := []string{"-q", "-F", "-t", "ext4", "-b", strconv.Itoa(blockSize), "-I", strconv.Itoa(inodeSize), "-m", "0",
		"-N", strconv.FormatUint(c.Inodes(), 10), "-J", "size=" + strconv.FormatUint(journal(size)/mib, 10)}
	if o.Label != "" {
		args = append(args, "-L", o.Label)
	}
	args = append(args, "-d", dir, tmp, strconv.FormatUint(size/1024, 10)+"k")
	if err := runTool(mkfs, args...); err != nil {
		os.Remove(tmp)
		return nil, fmt.Errorf("mkfs.ext4 -d %s %s: %w", dir, image, err)
	}
	if fsck, err := exec.LookPath("e2fsck"); err == nil {
		if err := runTool(fsck, "-fn", tmp); err != nil {
			os.Remove(tmp)
			return nil, fmt.Errorf("e2fsck -fn on the new image of %s: %w", dir, err)
		}
	}
	if err := os.Rename(tmp, image); err != nil {
		os.Remove(tmp)
		return nil, err
	}
	return &Result{Image: image, Size: size, Content: c}, nil
}

// runTool runs an e2fsprogs tool; its failure carries what it printed.
func runTool(path string, args ...string) error {
	var out bytes.Buffer
	cmd := exec.Command(path, args...)
	cmd.Stdout = &out
	cmd.Stderr = &out
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	err := cmd.Run()
	if err == nil {
		return nil
	}
	msg := strings.TrimSpace(out.String())
	if msg == "" {
		return err
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return fmt.Errorf("%s: %s", err, msg)
	}
	return fmt.Errorf("%w: %s", err, msg)
}
