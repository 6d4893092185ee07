#!/usr/bin/env python3
"""Inject lost writes into a disk image, the way a faulty storage layer loses them: copy
blocks back from an OLDER SNAPSHOT of the same image, so they read their older contents.

Test-only (it edits the image in place; stop the sidecar first). Used by lostwrite's tests
and demos; documented in docs/FORENSICS.md.

  inject-lost-writes.py IMAGE SNAPSHOT [--block-size 4096] [--offset BYTES]
                        [--blocks 5,9,100-120] [--changed N] [--fs-path /app/data3.fs ...]

  --blocks      revert these blocks (numbers in --block-size units, ranges allowed)
  --changed N   revert N of the blocks that differ between IMAGE and SNAPSHOT, evenly spread
  --fs-path P   revert the blocks of file or directory P in the ext2/3/4 filesystem of IMAGE
                (at --offset, for a partition) that differ from the snapshot; for a directory
                this is its entry blocks (debugfs "blocks")
Only blocks whose contents differ are written. Prints the reverted block numbers, one per line.
"""
import argparse
import subprocess
import sys


def parse_blocks(spec):
    out = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            a, b = part.split("-", 1)
            out.extend(range(int(a), int(b) + 1))
        else:
            out.append(int(part))
    return out


def fs_blocks(image, offset, path):
    """Filesystem block numbers of PATH and the filesystem block size, from debugfs."""
    dev = image if offset == 0 else f"{image}?offset={offset}"
    run = lambda req: subprocess.run(["debugfs", "-c", "-R", req, dev], capture_output=True, text=True, check=True).stdout
    size = next(int(l.split(":")[1]) for l in run("stats").splitlines() if l.startswith("Block size:"))
    blocks = [int(x) for x in run(f"blocks {path}").split()]
    if not blocks:
        sys.exit(f"debugfs found no blocks for {path} in {dev}")
    return blocks, size


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("image")
    ap.add_argument("snapshot")
    ap.add_argument("--block-size", type=int, default=4096)
    ap.add_argument("--offset", type=int, default=0, help="byte offset of the filesystem (partition start)")
    ap.add_argument("--blocks", default="")
    ap.add_argument("--changed", type=int, default=0)
    ap.add_argument("--fs-path", action="append", default=[])
    a = ap.parse_args()
    bs = a.block_size
    with open(a.image, "r+b") as img, open(a.snapshot, "rb") as snap:
        img.seek(0, 2)
        size = img.tell()
        snap.seek(0, 2)
        if snap.tell() != size:
            sys.exit(f"{a.snapshot} is {snap.tell()} bytes but {a.image} is {size}: not a snapshot of it")

        def read(f, b):
            f.seek(b * bs)
            return f.read(bs)

        def differs(b):
            return read(img, b) != read(snap, b)

        wanted = parse_blocks(a.blocks)
        if a.changed:
            changed = [b for b in range((size + bs - 1) // bs) if differs(b)]
            if len(changed) < a.changed:
                sys.exit(f"only {len(changed)} blocks differ; cannot revert {a.changed}")
            step = len(changed) / a.changed
            wanted.extend(changed[int(i * step)] for i in range(a.changed))
        for path in a.fs_path:
            blocks, fsbs = fs_blocks(a.image, a.offset, path)
            for fb in blocks:
                start = a.offset + fb * fsbs
                wanted.extend(range(start // bs, (start + fsbs - 1) // bs + 1))
        done = []
        for b in sorted(set(wanted)):
            if b * bs >= size or not differs(b):
                continue
            data = read(snap, b)
            img.seek(b * bs)
            img.write(data)
            done.append(b)
        img.flush()
    for b in done:
        print(b)


if __name__ == "__main__":
    main()
