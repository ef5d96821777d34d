package clientimg

import (
	"archive/tar"
	"fmt"
	"io"
	"os"
	"path"
	"strings"
	"time"
)

// epoch is the modification time of every entry, so identical inputs give
// an identical tar (and so an identical tag).
func epoch() time.Time { return time.Unix(0, 0).UTC() }

// tarWriter writes a deterministic tar: callers add entries in sorted
// order; parent directories are emitted once, before their first child.
type tarWriter struct {
	tw   *tar.Writer
	dirs map[string]bool
}

func newTarWriter(w io.Writer) *tarWriter {
	return &tarWriter{tw: tar.NewWriter(w), dirs: map[string]bool{".": true, "": true, "/": true}}
}

func (t *tarWriter) Close() error { return t.tw.Close() }

func (t *tarWriter) mkdirs(dir string) error {
	if t.dirs[dir] {
		return nil
	}
	if err := t.mkdirs(path.Dir(dir)); err != nil {
		return err
	}
	t.dirs[dir] = true
	return t.tw.WriteHeader(&tar.Header{
		Typeflag: tar.TypeDir, Name: dir + "/", Mode: 0o755, ModTime: epoch(),
	})
}

// addBytes adds a regular file with the given content.
func (t *tarWriter) addBytes(name string, mode int64, data []byte) error {
	name = strings.TrimPrefix(path.Clean(name), "/")
	if err := t.mkdirs(path.Dir(name)); err != nil {
		return fmt.Errorf("tar %s: %w", name, err)
	}
	hdr := &tar.Header{
		Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(data)), ModTime: epoch(),
	}
	if err := t.tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("tar %s: %w", name, err)
	}
	if _, err := t.tw.Write(data); err != nil {
		return fmt.Errorf("tar %s: %w", name, err)
	}
	return nil
}

// addFile adds the host file src (symlinks followed) as name, keeping only
// its permission bits.
func (t *tarWriter) addFile(name, src string) error {
	name = strings.TrimPrefix(path.Clean(name), "/")
	f, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("tar %s: %w", name, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("tar %s: %w", name, err)
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("tar %s: %s is not a regular file", name, src)
	}
	if err := t.mkdirs(path.Dir(name)); err != nil {
		return fmt.Errorf("tar %s: %w", name, err)
	}
	hdr := &tar.Header{
		Typeflag: tar.TypeReg, Name: name, Mode: int64(st.Mode().Perm()), Size: st.Size(), ModTime: epoch(),
	}
	if err := t.tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("tar %s: %w", name, err)
	}
	if _, err := io.Copy(t.tw, f); err != nil {
		return fmt.Errorf("tar %s: %w", name, err)
	}
	return nil
}
