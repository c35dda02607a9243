"""Tests of the image data layer: IDX files, built-in data sets, folders, arrays and batching."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.data import BatchStream, iterate_in_order, load_split
from selfsup.data import dataset_names, fashion_mnist
from selfsup.data.arrays import load_arrays
from selfsup.data.base import FileImages, TensorImages
from selfsup.data.folder import decode_image, load_folder
from selfsup.data.idx import read_idx
from selfsup.errors import DataError

CPU = torch.device("cpu")


# ---------------------------------------------------------------- helpers


def write_idx(path: Path, array: np.ndarray, type_code: int = 0x08, gzipped: bool = False) -> Path:
    """An IDX file written straight from the format description (independent of the reader)."""
    big_endian = array.astype(array.dtype.newbyteorder(">"))
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    content = header + big_endian.tobytes()
    path.write_bytes(gzip.compress(content) if gzipped else content)
    return path


def save_png(path: Path, pixels: np.ndarray, palette: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(pixels)
    (image.convert("P", palette=Image.Palette.ADAPTIVE) if palette else image).save(path)


def gray(value: int, height: int = 4, width: int = 5) -> np.ndarray:
    return np.full((height, width), value, dtype=np.uint8)


def numbered_images(count: int, height: int = 3, width: int = 4) -> np.ndarray:
    """(count, height, width) uint8 images whose pixels encode their index and position."""
    base = np.arange(count)[:, None, None] * 7 + np.arange(height * width).reshape(height, width)
    return (base % 251).astype(np.uint8)


def indexed_source(count: int) -> TensorImages:
    """A source whose label is each image's index, so batches reveal which samples they hold."""
    images = torch.from_numpy(numbered_images(count)).unsqueeze(1)
    return TensorImages(images, torch.arange(count))


def collect(stream: BatchStream, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(images.clone(), labels.clone()) for images, labels in stream.epoch(epoch)]


def assert_same_batches(first: list, second: list) -> None:
    assert len(first) == len(second)
    for (images_a, labels_a), (images_b, labels_b) in zip(first, second):
        assert torch.equal(images_a, images_b)
        assert torch.equal(labels_a, labels_b)


# ---------------------------------------------------------------- IDX


def test_a_data_dir_that_is_not_a_folder_is_named_not_passed_over(tmp_path):
    # fashion-mnist would otherwise be read from $SELFSUP_DATA or the system copy without a word
    (tmp_path / "a-file").write_text("")
    for data_dir in (tmp_path / "absent", tmp_path / "a-file"):
        with pytest.raises(DataError, match=r"--data-dir .* is not a folder"):
            load_split("fashion-mnist", "train", data_dir=str(data_dir))


@pytest.mark.parametrize("gzipped", [False, True])
def test_idx_round_trip_uint8(tmp_path, gzipped):
    array = numbered_images(6, 3, 5)
    path = write_idx(tmp_path / "images-idx3-ubyte", array, gzipped=gzipped)
    result = read_idx(path)
    assert result.dtype == np.uint8 and result.shape == (6, 3, 5)
    np.testing.assert_array_equal(result, array)
    result[0, 0, 0] = 1  # writable, unlike a view of the file's bytes


def test_idx_multibyte_values_are_big_endian(tmp_path):
    array = np.array([1, 256, 70000, -5], dtype=np.int32)
    result = read_idx(write_idx(tmp_path / "values.idx", array, type_code=0x0C))
    np.testing.assert_array_equal(result, array)
    assert result.dtype == np.int32


def test_idx_gzip_is_detected_by_content_not_name(tmp_path):
    array = numbered_images(2)
    misnamed_gzip = write_idx(tmp_path / "plain-looking", array, gzipped=True)
    misnamed_plain = write_idx(tmp_path / "looks-zipped.gz", array, gzipped=False)
    np.testing.assert_array_equal(read_idx(misnamed_gzip), array)
    np.testing.assert_array_equal(read_idx(misnamed_plain), array)


def test_idx_bad_magic_names_the_file(tmp_path):
    path = tmp_path / "not-idx"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(20))
    with pytest.raises(DataError, match=r"not-idx.*magic"):
        read_idx(path)


def test_idx_unsupported_type_code(tmp_path):
    path = write_idx(tmp_path / "odd-type", numbered_images(1), type_code=0x07)
    with pytest.raises(DataError, match=r"odd-type.*type code 0x07"):
        read_idx(path)


@pytest.mark.parametrize("gzipped", [False, True])
def test_idx_truncated_data(tmp_path, gzipped):
    path = write_idx(tmp_path / "short", numbered_images(4))
    content = path.read_bytes()[:-5]  # header promises 4*3*4 bytes, 5 are missing
    path.write_bytes(gzip.compress(content) if gzipped else content)
    with pytest.raises(DataError, match=r"short.*truncated.*43 bytes"):
        read_idx(path)


def test_idx_corrupt_gzip(tmp_path):
    path = write_idx(tmp_path / "broken.gz", numbered_images(50), gzipped=True)
    content = bytearray(path.read_bytes())
    content[20:40] = bytes(range(20))  # damage the compressed stream, keep the gzip magic
    path.write_bytes(bytes(content))
    with pytest.raises(DataError, match=r"broken\.gz.*corrupt gzip"):
        read_idx(path)


def test_idx_cut_off_gzip(tmp_path):
    path = write_idx(tmp_path / "cut.gz", numbered_images(50), gzipped=True)
    path.write_bytes(path.read_bytes()[:30])
    with pytest.raises(DataError, match=r"cut\.gz.*corrupt gzip"):
        read_idx(path)


# ---------------------------------------------------------------- Fashion-MNIST


@pytest.fixture
def no_system_fashion_mnist(tmp_path, monkeypatch):
    """Hide the machine's Fashion-MNIST: no $SELFSUP_DATA, the system folder points nowhere."""
    monkeypatch.delenv("SELFSUP_DATA", raising=False)
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIR", str(tmp_path / "no-system-copy"))


def write_fake_fashion_mnist(folder: Path, split: str, count: int, gzipped: bool) -> np.ndarray:
    folder.mkdir(parents=True, exist_ok=True)
    images_name, labels_name = fashion_mnist.FILES[split]
    suffix = ".gz" if gzipped else ""
    images = numbered_images(count, 28, 28)
    write_idx(folder / (images_name + suffix), images, gzipped=gzipped)
    labels = (np.arange(count) % 10).astype(np.uint8)
    write_idx(folder / (labels_name + suffix), labels, gzipped=gzipped)
    return images


def test_fashion_mnist_missing_files_say_how_to_install(tmp_path, no_system_fashion_mnist):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError) as caught:
        load_split("fashion-mnist", "train", data_dir=str(empty))
    message = str(caught.value)
    assert "sudo apt-get install dataset-fashion-mnist" in message
    assert str(empty) in message
    assert str(tmp_path / "no-system-copy") in message
    assert "SELFSUP_DATA" in message and "--data-dir" in message


@pytest.mark.parametrize("gzipped", [False, True])
def test_fashion_mnist_from_data_dir(tmp_path, no_system_fashion_mnist, gzipped):
    images = write_fake_fashion_mnist(tmp_path, "test", 12, gzipped)
    source = load_split("fashion-mnist", "test", data_dir=str(tmp_path))
    assert source.images.shape == (12, 1, 28, 28) and source.images.dtype == torch.uint8
    assert torch.equal(source.images[:, 0], torch.from_numpy(images))
    assert source.labels.dtype == torch.int64
    assert source.labels.tolist() == [i % 10 for i in range(12)]
    assert source.classes[9] == "Ankle boot" and len(source.classes) == 10


def test_fashion_mnist_from_env_subfolder(tmp_path, monkeypatch, no_system_fashion_mnist):
    write_fake_fashion_mnist(tmp_path / "fashion-mnist", "train", 5, gzipped=True)
    monkeypatch.setenv("SELFSUP_DATA", str(tmp_path))
    assert len(load_split("fashion-mnist", "train")) == 5


def test_fashion_mnist_count_mismatch(tmp_path, no_system_fashion_mnist):
    write_fake_fashion_mnist(tmp_path, "test", 6, gzipped=False)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(5, dtype=np.uint8))
    with pytest.raises(DataError, match=r"6 images.*5 labels"):
        load_split("fashion-mnist", "test", data_dir=str(tmp_path))


REAL_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(
    not (REAL_FASHION_MNIST / "t10k-images-idx3-ubyte.gz").exists(),
    reason="Debian package dataset-fashion-mnist not installed",
)
@pytest.mark.parametrize("split, count", [("train", 60000), ("test", 10000)])
def test_real_fashion_mnist(monkeypatch, split, count):
    monkeypatch.delenv("SELFSUP_DATA", raising=False)
    source = load_split("fashion-mnist", split)
    assert source.images.shape == (count, 1, 28, 28) and source.images.dtype == torch.uint8
    # Fashion-MNIST is balanced: every class has a tenth of each split.
    assert source.labels.bincount().tolist() == [count // 10] * 10
    assert source.images.max() == 255 and source.images.min() == 0
    again = load_split("fashion-mnist", split)
    assert again.images.data_ptr() == source.images.data_ptr()  # served from the cache


# ---------------------------------------------------------------- digits


def test_digits_scaled_from_sklearn():
    from sklearn.datasets import load_digits

    reference = load_digits()
    source = load_split("digits", "all")
    expected = np.rint(reference.images / 16 * 255).astype(np.uint8)
    assert source.images.shape == (len(expected), 1, 8, 8)
    np.testing.assert_array_equal(source.images[:, 0].numpy(), expected)
    np.testing.assert_array_equal(source.labels.numpy(), reference.target)


def rows(source: TensorImages) -> list[bytes]:
    """Each sample as bytes (image and label), for multiset comparisons."""
    return sorted(
        image.numpy().tobytes() + bytes([label])
        for image, label in zip(source.images, source.labels.tolist())
    )


def test_digits_split_is_disjoint_stratified_and_deterministic():
    train, test, everything = (load_split("digits", s) for s in ("train", "test", "all"))
    assert rows(train) + rows(test) != [] and sorted(rows(train) + rows(test)) == rows(everything)
    assert len(test) == round(0.2 * len(everything))
    share = test.labels.bincount(minlength=10) / everything.labels.bincount(minlength=10)
    assert torch.all((share - 0.2).abs() < 0.02)
    again = load_split("digits", "test")
    assert torch.equal(again.images, test.images) and torch.equal(again.labels, test.labels)


# ---------------------------------------------------------------- folders


def test_folder_labels_from_sorted_subfolders(tmp_path):
    # Created in reverse order: labels must follow the sorted names, not creation order.
    save_png(tmp_path / "dog" / "a.png", gray(200))
    save_png(tmp_path / "dog" / "deeper" / "b.png", gray(210))
    save_png(tmp_path / "cat" / "c.png", gray(10))
    save_png(tmp_path / ".hidden" / "d.png", gray(99))
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    source = load_folder(tmp_path, "all")
    assert isinstance(source, TensorImages)
    assert source.classes == ["cat", "dog"]
    assert source.images.shape == (3, 1, 4, 5)
    by_value = {int(image[0, 0, 0]): int(label) for image, label in zip(source.images,
                                                                          source.labels)}
    assert by_value == {10: 0, 200: 1, 210: 1}


def test_folder_without_subfolders_is_unlabelled_and_holds_out_a_tenth(tmp_path):
    for i in range(30):
        save_png(tmp_path / f"{i:02d}.png", gray(i, 2, 2))
    train, test = load_folder(tmp_path, "train"), load_folder(tmp_path, "test")
    assert train.labels is None and test.labels is None
    train_values = set(train.images[:, 0, 0, 0].tolist())
    test_values = set(test.images[:, 0, 0, 0].tolist())
    assert len(test_values) == 3 and not train_values & test_values
    assert train_values | test_values == set(range(30))
    assert torch.equal(load_folder(tmp_path, "test").images, test.images)


def test_folder_train_test_subfolders_share_class_numbers(tmp_path):
    save_png(tmp_path / "train" / "ant" / "1.png", gray(1))
    save_png(tmp_path / "train" / "bee" / "2.png", gray(2))
    save_png(tmp_path / "test" / "cow" / "3.png", gray(3))
    train, test = load_folder(tmp_path, "train"), load_folder(tmp_path, "test")
    assert train.classes == test.classes == ["ant", "bee", "cow"]
    assert train.labels.tolist() == [0, 1] and test.labels.tolist() == [2]
    assert len(load_folder(tmp_path, "all")) == 3


def test_folder_colour_modes(tmp_path):
    rgb = np.zeros((4, 5, 3), dtype=np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 30, 60, 90
    save_png(tmp_path / "rgb.png", rgb)
    save_png(tmp_path / "rgba.png", np.dstack([rgb, np.full((4, 5), 7, np.uint8)]))
    save_png(tmp_path / "palette.png", rgb, palette=True)
    save_png(tmp_path / "gray.png", gray(42))
    assert Image.open(tmp_path / "palette.png").mode == "P"
    for name in ("rgb", "rgba", "palette"):
        decoded = decode_image(str(tmp_path / f"{name}.png"))
        assert decoded.shape == (3, 4, 5) and decoded[:, 0, 0].tolist() == [30, 60, 90], name
    assert decode_image(str(tmp_path / "gray.png")).shape == (1, 4, 5)
    # One colour image makes the whole in-memory folder RGB; grayscale is repeated.
    source = load_folder(tmp_path, "all")
    assert source.images.shape == (4, 3, 4, 5)
    assert [42, 42, 42] in source.images[:, :, 0, 0].tolist()


def test_folder_errors_name_the_path(tmp_path):
    with pytest.raises(DataError, match="no such folder"):
        load_folder(tmp_path / "missing", "all")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty.*no images found.*\.png.*\.jpg"):
        load_folder(tmp_path / "empty", "all")


def test_folder_corrupt_image_named(tmp_path):
    save_png(tmp_path / "good.png", gray(1))
    (tmp_path / "zbroken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a PNG")
    with pytest.raises(DataError, match=r"zbroken\.png.*cannot decode"):
        load_folder(tmp_path, "all")


def test_folder_mismatched_sizes_named(tmp_path):
    save_png(tmp_path / "a.png", gray(1, 4, 5))
    save_png(tmp_path / "b.png", gray(1, 4, 6))
    with pytest.raises(DataError, match=r"b\.png.*6x4.*5x4.*a\.png"):
        load_folder(tmp_path, "all")


def test_large_folder_streams_lazily_and_reports_bad_files_when_read(tmp_path):
    for i in range(4):
        save_png(tmp_path / "x" / f"{i}.png", gray(i * 10))
    (tmp_path / "x" / "9.png").write_bytes(b"garbage")  # sorted last; only read lazily
    source = load_folder(tmp_path / "x", "all", max_in_memory=2)
    assert isinstance(source, FileImages) and source.shape == (1, 4, 5) and len(source) == 5
    assert source.get(torch.tensor([2, 0]))[:, 0, 0, 0].tolist() == [20, 0]
    pickle.dumps(source.decode)  # DataLoader workers need to receive it
    with pytest.raises(DataError, match=r"9\.png"):
        source.get(torch.tensor([4]))


def test_decode_errors_in_worker_processes_stay_data_errors(tmp_path):
    for i in range(3):
        save_png(tmp_path / f"{i}.png", gray(i))
    (tmp_path / "3.png").write_bytes(b"garbage")
    source = load_folder(tmp_path, "all", max_in_memory=0)
    stream = BatchStream(source, 4, CPU, seed=0, num_workers=1)
    with pytest.raises(DataError, match=r"^\S*3\.png: cannot decode"):  # no worker traceback
        list(stream.epoch(0))


# ---------------------------------------------------------------- arrays


def test_npy_layouts_and_value_ranges(tmp_path):
    images = numbered_images(5, 4, 6)
    np.save(tmp_path / "nhw.npy", images)
    np.save(tmp_path / "nhwc.npy", np.repeat(images[..., None], 3, axis=3) / 255.0)
    np.save(tmp_path / "nchw.npy", images[:, None].astype(np.float32))  # [0, 255] floats
    expected = torch.from_numpy(images).unsqueeze(1)
    assert torch.equal(load_arrays(tmp_path / "nhw.npy", "all").images, expected)
    assert torch.equal(load_arrays(tmp_path / "nchw.npy", "all").images, expected)
    rgb = load_arrays(tmp_path / "nhwc.npy", "all")
    assert torch.equal(rgb.images, expected.expand(-1, 3, -1, -1)) and rgb.labels is None


def test_npz_keys_and_splits(tmp_path):
    images = numbered_images(20)
    labels = np.arange(20) % 4
    np.savez(tmp_path / "plain.npz", x=images, y=labels)
    train, test = (load_split(str(tmp_path / "plain.npz"), s) for s in ("train", "test"))
    assert len(train) == 18 and len(test) == 2
    pairs = {(int(img[0, 0, 0]), int(lab)) for s in (train, test)
             for img, lab in zip(s.images, s.labels)}
    assert pairs == {(int(images[i, 0, 0]), int(labels[i])) for i in range(20)}

    np.savez(tmp_path / "split.npz", x_train=images[:15], y_train=labels[:15],
             x_test=images[15:], y_test=labels[15:])
    test = load_arrays(tmp_path / "split.npz", "test")
    assert torch.equal(test.images[:, 0], torch.from_numpy(images[15:]))
    assert test.labels.tolist() == labels[15:].tolist()
    assert len(load_arrays(tmp_path / "split.npz", "all")) == 20


def test_pickled_arrays_are_refused(tmp_path):
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match=r"objects\.npy.*pickled"):
        load_arrays(tmp_path / "objects.npy", "all")
    with open(tmp_path / "raw.npy", "wb") as handle:
        pickle.dump({"images": [1, 2]}, handle)
    with pytest.raises(DataError, match=r"raw\.npy.*pickled"):
        load_arrays(tmp_path / "raw.npy", "all")
    np.savez(tmp_path / "mixed.npz", images=np.array([None, 1], dtype=object))
    with pytest.raises(DataError, match=r"mixed\.npz.*pickled"):
        load_arrays(tmp_path / "mixed.npz", "all")


@pytest.mark.parametrize(
    "array, problem",
    [
        (np.zeros((3, 4, 4, 5), np.uint8), r"shape \(3, 4, 4, 5\)"),
        (np.zeros((3, 4), np.uint8), r"shape \(3, 4\)"),
        (np.linspace(-1, 2, 48).reshape(3, 4, 4), r"\[-1, 2\]"),
        (np.full((2, 4, 4), 300, np.int64), r"0\.\.255, found 300\.\.300"),
        (np.zeros((0, 4, 4), np.uint8), "empty"),
        (np.zeros((2, 4, 4), bool), "dtype bool"),
    ],
)
def test_bad_arrays_named(tmp_path, array, problem):
    np.save(tmp_path / "bad.npy", array)
    with pytest.raises(DataError, match=r"bad\.npy.*" + problem):
        load_arrays(tmp_path / "bad.npy", "all")


def test_npz_without_images_lists_its_keys(tmp_path):
    np.savez(tmp_path / "odd.npz", pixels=numbered_images(2))
    with pytest.raises(DataError, match=r"odd\.npz.*pixels"):
        load_arrays(tmp_path / "odd.npz", "all")


# ---------------------------------------------------------------- load_split


def test_load_split_unknown_name_lists_choices():
    assert {"digits", "fashion-mnist"} <= set(dataset_names())
    with pytest.raises(DataError, match=r"no-such-set.*digits.*fashion-mnist.*folder.*\.npz"):
        load_split("no-such-set", "train")


def test_load_split_routes_folders_and_arrays(tmp_path):
    save_png(tmp_path / "pics" / "one.png", gray(5))
    np.save(tmp_path / "arr.npy", numbered_images(3))
    assert load_split(str(tmp_path / "pics"), "all").images.shape == (1, 1, 4, 5)
    assert load_split(str(tmp_path / "arr.npy"), "all").images.shape == (3, 1, 3, 4)


# ---------------------------------------------------------------- batching


def test_batches_depend_only_on_seed_and_epoch():
    source = indexed_source(50)
    first = collect(BatchStream(source, 8, CPU, seed=3), epoch=2)
    second = collect(BatchStream(source, 8, CPU, seed=3), epoch=2)  # e.g. a resumed run
    assert_same_batches(first, second)
    other_epoch = collect(BatchStream(source, 8, CPU, seed=3), epoch=3)
    other_seed = collect(BatchStream(source, 8, CPU, seed=4), epoch=2)
    assert not torch.equal(first[0][1], other_epoch[0][1])
    assert not torch.equal(first[0][1], other_seed[0][1])


def test_drop_last_batches_are_full_and_distinct():
    source = indexed_source(50)
    stream = BatchStream(source, 8, CPU, seed=0)
    batches = collect(stream, 0)
    assert len(stream) == len(batches) == 50 // 8
    seen = torch.cat([labels for _, labels in batches])
    assert all(len(labels) == 8 for _, labels in batches)
    assert len(set(seen.tolist())) == len(seen)
    for images, labels in batches:  # images travel with their labels
        assert torch.equal(images, source.images[labels])
        assert images.dtype == torch.uint8 and labels.dtype == torch.int64


def test_every_sample_once_per_epoch_without_drop_last():
    source = indexed_source(50)
    stream = BatchStream(source, 8, CPU, seed=1, drop_last=False)
    for epoch in range(3):
        batches = collect(stream, epoch)
        assert len(batches) == len(stream) == 7 and len(batches[-1][1]) == 50 - 6 * 8
        assert sorted(torch.cat([labels for _, labels in batches]).tolist()) == list(range(50))


def test_too_few_samples_for_a_batch():
    with pytest.raises(DataError, match=r"5 images.*batch of 8.*--batch-size"):
        BatchStream(indexed_source(5), 8, CPU, seed=0)


def test_iterate_in_order_keeps_the_last_partial_batch():
    source = indexed_source(11)
    batches = list(iterate_in_order(source, 4, CPU))
    assert [len(labels) for _, labels in batches] == [4, 4, 3]
    assert torch.cat([labels for _, labels in batches]).tolist() == list(range(11))
    assert torch.equal(torch.cat([images for images, _ in batches]), source.images)


@pytest.fixture
def png_folder(tmp_path) -> Path:
    images = numbered_images(21, 4, 5)
    for i, pixels in enumerate(images):
        save_png(tmp_path / ("even" if i % 2 == 0 else "odd") / f"{i:02d}.png", pixels)
    return tmp_path


@pytest.mark.parametrize("num_workers", [0, 2])
def test_streamed_files_give_the_same_batches_as_memory(png_folder, num_workers):
    in_memory = load_folder(png_folder, "all")
    streamed = load_folder(png_folder, "all", max_in_memory=0)
    assert isinstance(in_memory, TensorImages) and isinstance(streamed, FileImages)
    memory_stream = BatchStream(in_memory, 4, CPU, seed=7)
    file_stream = BatchStream(streamed, 4, CPU, seed=7, num_workers=num_workers)
    assert memory_stream.on_device and not file_stream.on_device
    assert_same_batches(collect(memory_stream, 0), collect(file_stream, 0))
    # Leaving an epoch early (a run stopped mid-epoch) must not disturb the next one.
    next(iter(file_stream.epoch(1)))
    assert_same_batches(collect(memory_stream, 2), collect(file_stream, 2))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_batches_match_cpu(png_folder):
    cuda = torch.device("cuda")
    in_memory = load_folder(png_folder, "all")
    expected = collect(BatchStream(in_memory, 4, CPU, seed=5), 1)
    on_device = BatchStream(in_memory, 4, cuda, seed=5)
    too_big = BatchStream(in_memory, 4, cuda, seed=5, device_max_gb=0)  # streamed, pinned
    files = BatchStream(load_folder(png_folder, "all", max_in_memory=0), 4, cuda, seed=5,
                        num_workers=2)
    assert on_device.on_device and not too_big.on_device
    for stream in (on_device, too_big, files):
        batches = collect(stream, 1)
        assert all(images.is_cuda and labels.is_cuda for images, labels in batches)
        assert_same_batches(expected, [(i.cpu(), l.cpu()) for i, l in batches])


def test_data_options_reach_the_data_set_and_unknown_ones_are_named():
    from selfsup.errors import ConfigError

    with pytest.raises(ConfigError, match="has no option colour; its options: none"):
        load_split("digits", "train", options={"colour": True})
    with pytest.raises(ConfigError, match="are for registered data sets"):
        load_split("/no/such.npy", "train", options={"colour": True})
    try:  # a real option, through the same path the config's data.options takes
        two, ten = (load_split("16s-reads", "test", options={"reads_per_gene": n}) for n in (2, 10))
    except DataError as error:  # microbiomeutil-data is not installed
        pytest.skip(str(error))
    assert len(ten) == 5 * len(two)


def test_a_folder_mixing_grey_and_colour_gives_both_splits_three_channels(tmp_path):
    """The audit's case: train held one colour image (promoted to RGB), test only grey ones (kept
    at one channel), and the probe crashed on the mismatch."""
    root = tmp_path / "mixed"
    colour = np.zeros((4, 5, 3), np.uint8)
    colour[..., 0] = 200
    save_png(root / "train" / "a" / "0.png", colour)
    save_png(root / "train" / "a" / "1.png", gray(10))
    save_png(root / "test" / "a" / "0.png", gray(20))
    train, test = load_folder(root, "train"), load_folder(root, "test")
    assert train.shape == test.shape == (3, 4, 5)
    assert torch.equal(test.get(torch.tensor([0]))[0], torch.full((3, 4, 5), 20, dtype=torch.uint8))
    grey_only = tmp_path / "grey"
    save_png(grey_only / "x" / "0.png", gray(1))
    save_png(grey_only / "x" / "1.png", gray(2))
    assert load_folder(grey_only, "all").shape == (1, 4, 5)
