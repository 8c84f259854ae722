"""Reading datasets in the official format: a ZIP or folder of PNG (pixels) or NPY (latents) files
plus an optional `dataset.json` with labels (docs/method.md#datasets).

Safe with DataLoader workers (fork or spawn) and several ranks: the object pickles without its
ZIP handle, and each process opens its own handle on first use.
"""

import os
import zipfile
from pathlib import Path

import numpy as np
import torch

from edm2.data.limits import check_regular, load_npy, open_image, read_file, read_zip_member
from edm2.errors import DataError
from edm2.naming import DATASET_JSON, file_ext, parse_dataset_json, pil_extensions


class ImageFolderDataset(torch.utils.data.Dataset):
    """Map-style dataset: `ds[i] -> (CHW array (uint8 pixels or float32 latents), float32 label)`."""

    def __init__(
        self,
        path,  # Dataset folder or .zip file.
        resolution: int | None = None,  # Expected image height/width; None accepts whatever the files have.
        use_labels: bool = True,  # Read labels from dataset.json; False gives label_dim = 0.
        max_size: int | None = None,  # Keep a random subset of at most this many images (before xflip).
        xflip: bool = False,  # Double the dataset with horizontally mirrored copies.
        random_seed: int = 0,  # Seed of the max_size subset.
        cache: bool = False,  # Keep decoded images in memory.
    ):
        self._path = Path(path)
        self._zipfile = None
        self._zip_pid = None
        if not self._path.exists():
            raise DataError(f"dataset {path} does not exist; create it with `edm2 dataset convert`")
        if self._path.is_dir():
            self._type = "dir"
            self._all_fnames = {
                os.path.relpath(os.path.join(root, fname), start=self._path).replace("\\", "/")
                for root, _dirs, files in os.walk(self._path)
                for fname in files
            }
            exts = pil_extensions() | {".npy"}
            for fname in sorted(self._all_fnames):  # a link to /dev/zero or a FIFO is refused by name
                if file_ext(fname) in exts or fname == DATASET_JSON:
                    check_regular(self._path / fname, f"{self._path}/{fname}")
        elif file_ext(str(self._path)) == ".zip":
            self._type = "zip"
            self._all_fnames = set(self._get_zipfile().namelist())
        else:
            raise DataError(f"dataset {path} is neither a folder nor a .zip file")

        exts = pil_extensions() | {".npy"}  # docs/method.md#datasets
        # docs/method.md#datasets: image files sorted lexicographically by relative path.
        self._image_fnames = sorted(f for f in self._all_fnames if file_ext(f) in exts)
        if not self._image_fnames:
            raise DataError(f"dataset {path} contains no image (.png, .jpg, ...) or .npy files")
        self._name = self._path.stem
        self._raw_shape = [len(self._image_fnames)] + list(self._load_raw_image(0).shape)
        if resolution is not None and (self._raw_shape[2] != resolution or self._raw_shape[3] != resolution):
            raise DataError(
                f"dataset {path} holds {self._raw_shape[3]}x{self._raw_shape[2]} images, not "
                f"{resolution}x{resolution}; convert it with --resolution {resolution}x{resolution}"
            )

        self._use_labels = use_labels
        self._cache = cache
        self._cached_images = {}
        self._raw_labels = None

        # docs/method.md#datasets: max_size subset (shuffle with RandomState(seed mod 2^31), keep first, sort), then xflip.
        self._raw_idx = np.arange(self._raw_shape[0], dtype=np.int64)
        if max_size is not None and self._raw_idx.size > max_size:
            np.random.RandomState(random_seed % (1 << 31)).shuffle(self._raw_idx)
            self._raw_idx = np.sort(self._raw_idx[:max_size])
        self._xflip = np.zeros(self._raw_idx.size, dtype=np.uint8)
        if xflip:
            self._raw_idx = np.tile(self._raw_idx, 2)
            self._xflip = np.concatenate([self._xflip, np.ones_like(self._xflip)])

    # ---- files -------------------------------------------------------------------------------

    def _get_zipfile(self) -> zipfile.ZipFile:
        """This process's own ZIP handle (re-opened after fork, pickling or close())."""
        if self._zipfile is None or self._zip_pid != os.getpid():
            try:
                self._zipfile = zipfile.ZipFile(self._path)
            except (zipfile.BadZipFile, OSError) as e:
                raise DataError(f"cannot read dataset ZIP {self._path}: {e}") from None
            self._zip_pid = os.getpid()
        return self._zipfile

    def _read_bytes(self, fname: str) -> bytes:
        try:
            if self._type == "dir":
                return read_file(self._path / fname, f"{self._path}/{fname}")
            return read_zip_member(self._get_zipfile(), fname, f"{self._path}:{fname}")
        except (OSError, KeyError, zipfile.BadZipFile, EOFError, NotImplementedError) as e:
            raise DataError(f"cannot read {fname} from dataset {self._path}: {e}") from None

    def close(self):
        if self._zipfile is not None:
            self._zipfile.close()
        self._zipfile = None

    def __getstate__(self):  # one ZIP handle per process: never pickle it
        return {**self.__dict__, "_zipfile": None, "_zip_pid": None}

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    # ---- raw data ----------------------------------------------------------------------------

    def _load_raw_image(self, raw_idx: int) -> np.ndarray:
        """File -> CHW array: .npy keeps its dtype, reshaped [-1, H, W]; images via PIL, no RGB conversion."""
        fname = self._image_fnames[raw_idx]
        data = self._read_bytes(fname)
        where = f"{fname} in dataset {self._path}"
        try:
            if file_ext(fname) == ".npy":
                image = load_npy(data, where)
                if image.ndim < 2:
                    raise ValueError(f"a .npy image needs at least 2 dimensions, got shape {list(image.shape)}")
                image = image.reshape(-1, *image.shape[-2:])
            else:
                with open_image(data, where) as img:
                    image = np.array(img)
                image = image.reshape(*image.shape[:2], -1).transpose(2, 0, 1)
        except (OSError, ValueError, SyntaxError) as e:
            raise DataError(f"cannot decode {fname} in dataset {self._path}: {e}") from None
        return image

    def _load_raw_labels(self):
        """Labels from dataset.json for every image file: int64 [N] or float32 [N, D]; None if absent/null."""
        if DATASET_JSON not in self._all_fnames:
            return None
        where = f"{self._path}/{DATASET_JSON}"
        labels = parse_dataset_json(self._read_bytes(DATASET_JSON), where)
        if labels is None:
            return None
        missing = [f for f in self._image_fnames if f not in labels]
        if missing:
            raise DataError(
                f"{where} has no label for {missing[0]} ({len(missing)} images unlabelled); "
                "fix dataset.json or load with use_labels=False"
            )
        labels = np.array([labels[f] for f in self._image_fnames])  # one kind for all (parse_dataset_json)
        return labels.astype(np.int64) if labels.ndim == 1 else labels.astype(np.float32)

    def _get_raw_labels(self) -> np.ndarray:
        if self._raw_labels is None:
            labels = self._load_raw_labels() if self._use_labels else None
            if labels is None:
                labels = np.zeros([self._raw_shape[0], 0], dtype=np.float32)
            self._raw_labels = labels
        return self._raw_labels

    # ---- items -------------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._raw_idx.size

    def __getitem__(self, idx):
        raw_idx = int(self._raw_idx[idx])
        image = self._cached_images.get(raw_idx)
        if image is None:
            image = self._load_raw_image(raw_idx)
            if list(image.shape) != self._raw_shape[1:]:
                raise DataError(
                    f"{self._image_fnames[raw_idx]} in dataset {self._path} has shape {list(image.shape)}, "
                    f"the first file has {self._raw_shape[1:]}; all files must match"
                )
            if self._cache:
                self._cached_images[raw_idx] = image
        if self._xflip[idx]:
            image = image[:, :, ::-1]  # docs/method.md#datasets: mirror the last axis
        return image.copy(), self.get_label(idx)

    def get_label(self, idx) -> np.ndarray:
        label = self._get_raw_labels()[self._raw_idx[idx]]
        if label.dtype == np.int64:  # docs/method.md#datasets: class index -> one-hot of length max+1
            onehot = np.zeros(self.label_shape, dtype=np.float32)
            onehot[label] = 1
            return onehot
        return label.copy()

    # ---- properties --------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._name

    @property
    def path(self) -> Path:
        return self._path

    @property
    def image_fnames(self) -> list:
        return list(self._image_fnames)

    @property
    def raw_shape(self) -> list:
        return list(self._raw_shape)

    @property
    def image_shape(self) -> list:  # [C, H, W]
        return list(self._raw_shape[1:])

    @property
    def num_channels(self) -> int:
        return self.image_shape[0]

    @property
    def resolution(self) -> int:
        _, h, w = self.image_shape
        if h != w:
            raise DataError(f"dataset {self._path} holds non-square {w}x{h} images")
        return h

    @property
    def label_shape(self) -> list:
        labels = self._get_raw_labels()
        if labels.dtype == np.int64:
            return [int(labels.max()) + 1] if labels.size else [0]
        return list(labels.shape[1:])

    @property
    def label_dim(self) -> int:
        return self.label_shape[0]

    @property
    def has_labels(self) -> bool:
        return any(x != 0 for x in self.label_shape)

    @property
    def has_onehot_labels(self) -> bool:
        return self._get_raw_labels().dtype == np.int64
