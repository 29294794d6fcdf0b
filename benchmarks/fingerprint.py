"""Cost of the probe set's file fingerprint (cache keys) on a synthetic Broden-sized folder.

    PYTHONPATH=. python3 benchmarks/fingerprint.py /tmp/fp-bench 12   # 63,305 files of 12 KB

writes 63,305 small JPEG files (the second argument: their size in KB; 0 for 8x8 px JPEGs of
about 0.7 KB) named by an index.csv, times ``files_fingerprint`` by size+mtime and by content
SHA-256 (twice each), and deletes the folder. docs/reliability.md quotes its numbers."""
import io, os, shutil, sys, time
from pathlib import Path
import numpy as np
from PIL import Image
from dissect.data.broden import BrodenIndex

N = 63305
root = Path(sys.argv[1]); kb = int(sys.argv[2]) if len(sys.argv) > 2 else 0
shutil.rmtree(root, ignore_errors=True)
(root / "images").mkdir(parents=True)
rng = np.random.default_rng(0)
buf = io.BytesIO()
side = 8 if kb == 0 else 96
Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
data = buf.getvalue()
if kb:
    data = data + rng.bytes(max(0, kb * 1024 - len(data)))
rows = ["image,split,ih,iw,sh,sw,color"]
for i in range(N):
    name = f"img-{i:05d}.jpg"
    (root / "images" / name).write_bytes(data[:-4] + i.to_bytes(4, "little"))
    rows.append(f"{name},train,8,8,8,8,")
(root / "index.csv").write_text("\n".join(rows) + "\n")
(root / "label.csv").write_text("number,name,category,frequency,coverage\n0,-,,0,0\n1,red-c,color(1),1,1\n")
(root / "category.csv").write_text("name,first,last,count,frequency\ncolor,1,1,1,1\n")
total = sum(f.stat().st_size for f in (root / "images").iterdir())
print(f"{N} files, {total / 1e6:.1f} MB ({len(data)} bytes each)")
t = time.perf_counter(); idx = BrodenIndex(root); print(f"read index: {time.perf_counter() - t:.2f} s")
for content in (False, True, False, True):
    t = time.perf_counter(); idx.files_fingerprint(content=content)
    print(f"fingerprint {'content sha256' if content else 'size+mtime'}: {time.perf_counter() - t:.2f} s (warm page cache)")
shutil.rmtree(root)
