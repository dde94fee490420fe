"""Verification .bin files: round trip, insightface variants, the real fixture, hostile pickles."""

from __future__ import annotations

import builtins
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from face_pipelines.errors import DataError, MissingInputError
from face_pipelines.io.images import encode_jpeg
from face_pipelines.io.verification_bin import read_verification_bin, write_verification_bin

FIXTURE = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "small_lfw.bin"


def smooth_images(n: int, h: int = 32, w: int = 32, seed: int = 0) -> np.ndarray:
    """Smooth colour gradients with a little noise: JPEG at q95 reproduces them closely."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    out = np.empty((n, h, w, 3), dtype=np.uint8)
    for i in range(n):
        a, b, c = rng.uniform(40, 200, 3)
        img = np.stack([a + 50 * xx, b + 50 * yy, c - 40 * xx * yy], axis=-1)
        out[i] = np.clip(img + rng.normal(0, 2, img.shape), 0, 255).astype(np.uint8)
    return out


def test_round_trip(tmp_path):
    images = smooth_images(8)
    issame = np.array([True, False, True, False])
    path = tmp_path / "bench" / "tiny.bin"
    write_verification_bin(path, images, issame)
    got, got_same = read_verification_bin(path)
    assert got.shape == images.shape and got.dtype == np.uint8
    assert np.array_equal(got_same, issame) and got_same.dtype == bool
    err = np.abs(got.astype(int) - images.astype(int))
    assert err.mean() < 2.5, err.mean()
    # channel order survives: a red-dominant image stays red-dominant
    assert np.array_equal(got.mean(axis=(1, 2)).argmax(1), images.mean(axis=(1, 2)).argmax(1))
    # what insightface's own loader does with the file: plain bytes and bools
    bins, same_list = pickle.loads(path.read_bytes(), encoding="bytes")
    assert all(isinstance(b, bytes) and b[:2] == b"\xff\xd8" for b in bins)
    assert same_list == [True, False, True, False]
    assert [p.name for p in path.parent.iterdir()] == ["tiny.bin"]


def test_raw_uint8_arrays_and_encoded_arrays(tmp_path):
    images = smooth_images(4, 24, 24, seed=1)
    raw = tmp_path / "raw.bin"
    raw.write_bytes(pickle.dumps(([im for im in images], [True, False])))
    got, same = read_verification_bin(raw)
    assert np.array_equal(got, images)  # raw pixels: exact
    assert same.tolist() == [True, False]

    # encoded JPEGs stored as uint8 arrays, 1-D and 1xL (as in released insightface files)
    encoded = [np.frombuffer(encode_jpeg(im), dtype=np.uint8) for im in images]
    encoded[1] = encoded[1].reshape(1, -1)
    enc = tmp_path / "enc.bin"
    enc.write_bytes(pickle.dumps((encoded, np.array([False, True]))))
    got, same = read_verification_bin(enc)
    assert np.abs(got.astype(int) - images.astype(int)).mean() < 2.5
    assert same.tolist() == [False, True]


def py2_pickle(bins: list[bytes], issame: list[bool]) -> bytes:
    """A pickle as Python 2 writes it: protocol 2, images as BINSTRING (py2 str) objects."""
    out = bytearray(b"\x80\x02]q\x00(")  # PROTO 2, EMPTY_LIST, BINPUT 0, MARK
    for b in bins:
        out += b"T" + struct.pack("<i", len(b)) + b  # BINSTRING
    out += b"e]q\x01("  # APPENDS, EMPTY_LIST, BINPUT 1, MARK
    out += b"".join(b"\x88" if s else b"\x89" for s in issame)  # NEWTRUE / NEWFALSE
    out += b"e\x86q\x02."  # APPENDS, TUPLE2, BINPUT 2, STOP
    return bytes(out)


def test_python2_pickle(tmp_path):
    images = smooth_images(4, seed=2)
    data = py2_pickle([encode_jpeg(im) for im in images], [False, True])
    with pytest.raises(UnicodeDecodeError):
        pickle.loads(data)  # proves it is a py2-str pickle that needs encoding='bytes'
    path = tmp_path / "py2.bin"
    path.write_bytes(data)
    got, same = read_verification_bin(path)
    assert got.shape == (4, 32, 32, 3) and same.tolist() == [False, True]
    assert np.abs(got.astype(int) - images.astype(int)).mean() < 2.5


def test_protocol2_pickle_with_arrays_from_python3(tmp_path):
    # Python 3 at protocol 2 writes bytes via _codecs.encode and arrays via numpy reconstruct.
    images = smooth_images(2, 20, 20, seed=3)
    path = tmp_path / "p2.bin"
    path.write_bytes(pickle.dumps(([images[0], encode_jpeg(images[1])], [True]), protocol=2))
    got, same = read_verification_bin(path)
    assert np.array_equal(got[0], images[0]) and same.tolist() == [True]


def test_non_square_images_are_resized_when_asked(tmp_path):
    images = [smooth_images(1, 40, 60, seed=s)[0] for s in range(2)]
    images += [smooth_images(1, 50, 30, seed=9)[0], smooth_images(1, 32, 32, seed=8)[0]]
    path = tmp_path / "ns.bin"
    path.write_bytes(pickle.dumps(([encode_jpeg(im) for im in images], [True, False])))
    got, _ = read_verification_bin(path, image_size=28)
    assert got.shape == (4, 28, 28, 3)
    # the centre of image 0 survives the short-side resize + centre crop
    assert abs(got[0].astype(float).mean() - images[0][:, 10:50].astype(float).mean()) < 4
    with pytest.raises(DataError, match=r"ns\.bin \[image 2\].*differs.*image_size"):
        read_verification_bin(path)


@pytest.mark.skipif(not FIXTURE.is_file(), reason=f"fixture {FIXTURE} not present")
def test_real_insightface_fixture():
    images, issame = read_verification_bin(FIXTURE)
    assert images.shape == (20, 112, 112, 3) and images.dtype == np.uint8
    assert issame.shape == (10,) and issame.dtype == bool
    assert images.std(axis=(1, 2, 3)).min() > 10  # real faces, not blank decodes
    # RGB, not BGR: faces are red-dominant on average
    means = images.reshape(-1, 3).mean(0)
    assert means[0] > means[2]


class _ShellMarker:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _EvalMarker:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (builtins.eval, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_hostile_pickles_are_refused_without_executing(tmp_path, protocol):
    good = encode_jpeg(smooth_images(1)[0])
    cases = {
        "system": (_ShellMarker, lambda m: ([good, good], [_ShellMarker(m)])),
        "eval": (_EvalMarker, lambda m: (_EvalMarker(m), [True])),
        "in_array": (
            _EvalMarker,
            lambda m: ([np.array([_EvalMarker(m)], dtype=object), good], [True]),
        ),
    }
    for name, (_, build) in cases.items():
        marker = tmp_path / f"marker_{name}_{protocol}"
        path = tmp_path / f"evil_{name}_{protocol}.bin"
        path.write_bytes(pickle.dumps(build(marker), protocol=protocol))
        expected = "posix.system|nt.system" if name == "system" else r"(__builtin__|builtins)\.eval"
        with pytest.raises(DataError, match=rf"evil_{name}_{protocol}\.bin.*refused.*({expected})"):
            read_verification_bin(path)
        assert not marker.exists()

    # positive control: the same bytes, unpickled naively, do run the payload
    control = tmp_path / "control_marker"
    pickle.loads(pickle.dumps(_EvalMarker(control), protocol=protocol))
    assert control.exists()


def test_pair_count_mismatch(tmp_path):
    img = encode_jpeg(smooth_images(1)[0])
    path = tmp_path / "mismatch.bin"
    path.write_bytes(pickle.dumps(([img] * 5, [True, False])))
    with pytest.raises(DataError, match=r"mismatch\.bin: pair count mismatch: 5 images but 2"):
        read_verification_bin(path)


def test_corrupt_jpeg_is_named_by_index(tmp_path):
    bins = [encode_jpeg(im) for im in smooth_images(4)]
    bins[3] = bins[3][: len(bins[3]) // 2]
    path = tmp_path / "corrupt.bin"
    path.write_bytes(pickle.dumps((bins, [True, True])))
    with pytest.raises(DataError, match=r"corrupt\.bin \[image 3\]: corrupt or truncated"):
        read_verification_bin(path)
    bins[3] = b"GIF-ish nonsense that is not an image"
    path.write_bytes(pickle.dumps((bins, [True, True])))
    with pytest.raises(DataError, match=r"corrupt\.bin \[image 3\]: not an image"):
        read_verification_bin(path)


def test_not_a_pickle_and_wrong_structure(tmp_path):
    path = tmp_path / "junk.bin"
    path.write_bytes(b"\x89PNG this is not a pickle at all")
    with pytest.raises(DataError, match=r"junk\.bin: not a valid pickle"):
        read_verification_bin(path)
    path.write_bytes(pickle.dumps({"bins": [], "issame": []}))
    with pytest.raises(DataError, match=r"junk\.bin: expected a pickled 2-tuple"):
        read_verification_bin(path)
    path.write_bytes(pickle.dumps(([b"x"], [True], "extra")))
    with pytest.raises(DataError, match="length 3"):
        read_verification_bin(path)
    path.write_bytes(pickle.dumps(([b"x", b"y"], ["yes"])))
    with pytest.raises(DataError, match=r"issame_list\[0\] must be a bool"):
        read_verification_bin(path)
    with pytest.raises(MissingInputError, match="absent.bin"):
        read_verification_bin(tmp_path / "absent.bin")
