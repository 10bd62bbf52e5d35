"""What a folder of real-world files holds (data/image.py): 16-bit, palette,
transparent, CMYK and EXIF-rotated images decoded as a photo viewer shows
them (pixels compared); truncated, empty and non-image files skipped and
counted in metrics.jsonl; a decompression bomb refused from its header."""
import io
import json
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from PIL import Image

from ebm_pretrain.data import image as image_lib, pipeline, sources
from helpers import ROOT, train_inprocess


def _png(im: Image.Image, **kw) -> bytes:
  buf = io.BytesIO()
  im.save(buf, format="PNG", **kw)
  return buf.getvalue()


def _gradient(h=12, w=20) -> np.ndarray:
  y, x = np.mgrid[0:h, 0:w]
  return np.stack([x * 12, y * 20, (x + y) * 7], -1).astype(np.uint8)


def test_16_bit_grey_is_scaled_not_clipped():
  values = np.array([[0, 257, 1000, 32768, 65535, 40000]], np.uint16)
  data = _png(Image.fromarray(values))
  assert Image.open(io.BytesIO(data)).mode.startswith("I")
  expected = np.round(values.astype(np.float64) * 255 / 65535).astype(np.uint8)
  np.testing.assert_array_equal(image_lib.decode_image(data, 1)[..., 0], expected)
  np.testing.assert_array_equal(image_lib.decode_image(data, 3), np.repeat(expected[..., None], 3, -1))


def test_palette_images_are_expanded_and_transparency_lands_on_white():
  rgb = Image.fromarray(_gradient())
  pal = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
  np.testing.assert_array_equal(image_lib.decode_image(_png(pal), 3), np.asarray(pal.convert("RGB")))
  # Index 0 transparent: shown on white.
  data = _png(pal, transparency=0)
  out = image_lib.decode_image(data, 3)
  idx = np.asarray(pal)
  np.testing.assert_array_equal(out[idx == 0], np.full(((idx == 0).sum(), 3), 255, np.uint8))
  np.testing.assert_array_equal(out[idx != 0], np.asarray(pal.convert("RGB"))[idx != 0])


def test_rgba_is_composited_onto_white():
  rgba = np.zeros((2, 2, 4), np.uint8)
  rgba[0, 0] = (200, 100, 0, 255)   # opaque
  rgba[0, 1] = (0, 0, 0, 0)         # transparent black: white
  rgba[1, 0] = (0, 0, 0, 128)       # half black: grey
  out = image_lib.decode_image(_png(Image.fromarray(rgba)), 3)
  assert tuple(out[0, 0]) == (200, 100, 0) and tuple(out[0, 1]) == (255, 255, 255)
  assert np.all(np.abs(out[1, 0].astype(int) - 127) <= 1)


def test_cmyk_jpeg_is_converted_to_rgb():
  rgb = _gradient(32, 32)
  buf = io.BytesIO()
  Image.fromarray(rgb).convert("CMYK").save(buf, format="JPEG", quality=100)
  assert Image.open(io.BytesIO(buf.getvalue())).mode == "CMYK"
  out = image_lib.decode_image(buf.getvalue(), 3)
  assert out.shape == rgb.shape
  assert np.abs(out.astype(int) - rgb).mean() < 3  # JPEG's loss only


@pytest.mark.parametrize("orientation,turn", [(3, 2), (6, -1), (8, 1)])
def test_exif_orientation_is_applied(orientation, turn):
  """EXIF 6 = 'rotate 90 clockwise to display', 8 = counter-clockwise, 3 = 180."""
  rgb = _gradient()  # 12 x 20: the rotations change the shape
  exif = Image.Exif()
  exif[0x0112] = orientation
  out = image_lib.decode_image(_png(Image.fromarray(rgb), exif=exif), 3)
  np.testing.assert_array_equal(out, np.rot90(rgb, k=turn))


def _bomb_png(side=30_000) -> bytes:
  """A valid PNG header claiming side x side RGB pixels (2.7 GB decoded), with a
  few bytes of image data: decoding would allocate before finding it short."""
  def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
  ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
  return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1000))
          + chunk(b"IEND", b""))


def test_a_decompression_bomb_is_refused_before_its_pixels_are_allocated(tmp_path):
  """In a process limited to 1.5 GB of address space, with Pillow's own bomb
  check off: the header alone refuses it, and the peak RSS stays small."""
  path = tmp_path / "bomb.png"
  path.write_bytes(_bomb_png())
  code = f"""
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (1_500_000_000, 1_500_000_000))
from PIL import Image
Image.MAX_IMAGE_PIXELS = None
from ebm_pretrain.data import image
try:
  image.decode_image(open({str(path)!r}, "rb").read(), 3)
except image.UndecodableImage as e:
  print("refused:", e)
# (VmHWM: this process's peak; ru_maxrss would carry the parent's over exec)
peak = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0].split()[1]
print("rss_mib", int(peak) // 1024)
"""
  proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "refused: 30000x30000 pixels is over the limit of 64,000,000" in proc.stdout, proc.stdout
  assert int(proc.stdout.split("rss_mib")[1]) < 300


def test_broken_files_are_undecodable_not_crashes():
  good = _png(Image.fromarray(_gradient()))
  for data in (b"", b"hello, I am text\n", good[: len(good) // 2], _bomb_png()):
    with pytest.raises(image_lib.UndecodableImage):
      image_lib.decode_image(data, 3)


def _hostile_folder(root) -> dict[str, bool]:
  """16 files: name -> whether it decodes."""
  root.mkdir()
  good = Image.fromarray(_gradient())
  files = {}
  buf = io.BytesIO()
  good.convert("CMYK").save(buf, format="JPEG")
  exif = Image.Exif()
  exif[0x0112] = 6
  blobs = {
      "plain.png": _png(good), "grey16.png": _png(Image.fromarray(np.full((9, 9), 40000, np.uint16))),
      "palette.png": _png(good.convert("P", palette=Image.Palette.ADAPTIVE)),
      "cmyk.jpg": buf.getvalue(), "rotated.png": _png(good, exif=exif),
      "truncated.png": _png(good)[:60], "empty.png": b"", "text.png": b"not an image\n",
      "bomb.png": _bomb_png(),
  }
  for i in range(7):
    blobs[f"extra{i}.png"] = _png(Image.fromarray(np.roll(_gradient(), i, 0)))
  for name, data in blobs.items():
    (root / name).write_bytes(data)
    files[name] = name not in ("truncated.png", "empty.png", "text.png", "bomb.png")
  return files


def test_a_hostile_folder_trains_and_counts_each_bad_file_once_per_epoch(tmp_path):
  files = _hostile_folder(tmp_path / "images")
  src = sources.FolderSource(sources.prepare_folder(str(tmp_path / "images"),
                                                    str(tmp_path / "cache")))
  batches = list(pipeline.make_eval_dataset(src, batch_size=16, image_size=16, channels=3))
  assert int(np.concatenate([b["valid"] for b in batches]).sum()) == sum(files.values())
  # One epoch exactly (16 files, batch 8, 2 steps): each bad file is drawn once.
  wd = tmp_path / "wd"
  train_inprocess("tiny", str(wd), **{"data.source": "folder", "data.folder": str(tmp_path / "images"),
                                      "data.data_dir": str(tmp_path / "tfds"), "total_steps": 2,
                                      "batch_size": 8, "log_every": 1, "eval_examples": 0})
  records = [json.loads(l) for l in open(wd / "metrics.jsonl")]
  assert sum(r["skipped_images"] for r in records) == sum(not ok for ok in files.values()) == 4
