package images

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
)

// fixRootDotDot rewrites, in the FAT32 filesystem at byte offset start of
// f, the ".." entry of every directory in the root directory to cluster 0,
// as FAT's specification says ".." names the root. go-diskfs v1.9.4 writes
// the root's cluster number there instead, which fsck.fat reports as an
// invalid ".." entry (firmware does not follow ".." and boots either way).
func fixRootDotDot(f *os.File, start int64) error {
	bs := make([]byte, sectorSize)
	if _, err := f.ReadAt(bs, start); err != nil {
		return fmt.Errorf("read ESP boot sector: %w", err)
	}
	bps := int64(binary.LittleEndian.Uint16(bs[11:]))
	spc := int64(bs[13])
	reserved := int64(binary.LittleEndian.Uint16(bs[14:]))
	nfats := int64(bs[16])
	fatSectors := int64(binary.LittleEndian.Uint32(bs[36:]))
	root := binary.LittleEndian.Uint32(bs[44:])
	if bps != sectorSize || spc == 0 || fatSectors == 0 || root < 2 {
		return errors.New("fix ESP directories: not a FAT32 boot sector")
	}
	clusterBytes := bps * spc
	fatOff := start + reserved*bps
	dataOff := fatOff + nfats*fatSectors*bps
	clusterOff := func(c uint32) int64 { return dataOff + int64(c-2)*clusterBytes }

	var dirs []uint32
	buf := make([]byte, clusterBytes)
	for c, n := root, 0; c >= 2 && c < 0x0ffffff8; n++ {
		if n > 1<<16 {
			return errors.New("fix ESP directories: root directory cluster chain loops")
		}
		if _, err := f.ReadAt(buf, clusterOff(c)); err != nil {
			return fmt.Errorf("read ESP root directory: %w", err)
		}
		end := false
		for i := 0; i+32 <= len(buf); i += 32 {
			e := buf[i : i+32]
			if e[0] == 0 {
				end = true
				break
			}
			attr := e[11]
			if e[0] == 0xe5 || attr == 0x0f || attr&0x10 == 0 || e[0] == '.' {
				continue
			}
			dirs = append(dirs, uint32(binary.LittleEndian.Uint16(e[20:]))<<16|uint32(binary.LittleEndian.Uint16(e[26:])))
		}
		if end {
			break
		}
		next := make([]byte, 4)
		if _, err := f.ReadAt(next, fatOff+int64(c)*4); err != nil {
			return fmt.Errorf("read ESP FAT: %w", err)
		}
		c = binary.LittleEndian.Uint32(next) & 0x0fffffff
	}
	for _, d := range dirs {
		e := make([]byte, 32)
		off := clusterOff(d) + 32 // "." first, ".." second
		if _, err := f.ReadAt(e, off); err != nil {
			return fmt.Errorf("read ESP directory: %w", err)
		}
		if string(e[:11]) != "..         " {
			return fmt.Errorf("fix ESP directories: cluster %d has no \"..\" entry second", d)
		}
		if uint32(binary.LittleEndian.Uint16(e[20:]))<<16|uint32(binary.LittleEndian.Uint16(e[26:])) != root {
			continue
		}
		clear(e[20:22])
		clear(e[26:28])
		if _, err := f.WriteAt(e, off); err != nil {
			return fmt.Errorf("fix ESP directory: %w", err)
		}
	}
	return nil
}
