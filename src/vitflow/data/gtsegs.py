"""ImageNet-segmentation (Guillaumin, Küttel & Ferrari, IJCV 2014): the ``gtsegs_ijcv.mat`` file of
4,276 ImageNet validation images with pixel masks that ViT-explanation papers evaluate on.

The file is MATLAB v7.3 (HDF5). ``/value/img`` holds ``(N, 1)`` object references, each to a
``(3, W, H)`` uint8 image (MATLAB stores column-major, hence the transposes); ``/value/gt``
holds ``(N, 1)`` references to ``1 x 1`` cells whose reference points to the ``(W, H)`` mask
(1 on the object). This is the layout Chefer et al.'s ``Imagenet_Segmentation`` reads. The file
has no class labels: the protocol explains the predicted class.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image


class GtSegsError(ValueError):
    """The file is not an ImageNet-segmentation ``.mat`` file (or h5py is missing)."""


class GtSegs:
    """Random access to the images and masks of a ``gtsegs_ijcv.mat`` file. The HDF5 handle is
    opened lazily in each process (``DataLoader`` workers reopen it after the fork)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._handle = None
        self._pid = None
        try:
            import h5py  # noqa: F401
        except ImportError:
            raise GtSegsError(
                "reading gtsegs_ijcv.mat needs h5py: pip install h5py (or 'vitflow[cli]')"
            ) from None
        if not self.path.is_file():
            raise GtSegsError(f"{self.path}: no such file")
        try:
            handle = self._open()
            images, masks = handle["/value/img"], handle["/value/gt"]
            self.length = int(images.shape[0])
            if masks.shape[0] != self.length:
                raise GtSegsError(f"{self.path}: {self.length} images but {masks.shape[0]} masks")
        except GtSegsError:
            raise
        except Exception as error:  # h5py raises OSError / KeyError for other files
            raise GtSegsError(
                f"{self.path}: not an ImageNet-segmentation file (MATLAB v7.3 with /value/img and "
                f"/value/gt): {str(error).splitlines()[0] if str(error) else type(error).__name__}"
            ) from None

    def _open(self):
        import h5py

        if self._handle is None or self._pid != os.getpid():
            self._handle = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._handle

    def __len__(self) -> int:
        return self.length

    def __getstate__(self) -> dict:  # an open HDF5 handle does not travel to worker processes
        state = dict(self.__dict__)
        state["_handle"] = state["_pid"] = None
        return state

    def image(self, index: int) -> Image.Image:
        handle = self._open()
        pixels = np.array(handle[handle["/value/img"][index, 0]]).transpose((2, 1, 0))
        return Image.fromarray(np.ascontiguousarray(pixels.astype(np.uint8))).convert("RGB")

    def mask(self, index: int) -> np.ndarray:
        """``(H, W)`` bool, True on the object."""
        handle = self._open()
        cell = handle[handle["/value/gt"][index, 0]]
        return np.array(handle[cell[0, 0]]).transpose((1, 0)) > 0


def is_gtsegs(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() == ".mat"


def write_gtsegs(path: str | os.PathLike, images: list[np.ndarray], masks: list[np.ndarray]) -> Path:
    """Write images ``(H, W, 3)`` uint8 and masks ``(H, W)`` in the ``gtsegs_ijcv.mat`` layout
    (for tests and small private benchmarks in the same format)."""
    import h5py

    path = Path(path)
    with h5py.File(path, "w") as f:
        refs = f.create_group("#refs#")
        image_refs = np.empty((len(images), 1), dtype=h5py.ref_dtype)
        mask_refs = np.empty((len(masks), 1), dtype=h5py.ref_dtype)
        for i, (image, mask) in enumerate(zip(images, masks, strict=True)):
            stored = refs.create_dataset(f"img{i}", data=np.ascontiguousarray(image.transpose((2, 1, 0))))
            gt = refs.create_dataset(f"gt{i}", data=np.ascontiguousarray(mask.astype(np.uint8).T))
            cell = refs.create_dataset(f"cell{i}", shape=(1, 1), dtype=h5py.ref_dtype)
            cell[0, 0] = gt.ref
            image_refs[i, 0], mask_refs[i, 0] = stored.ref, cell.ref
        value = f.create_group("value")
        value.create_dataset("img", data=image_refs)
        value.create_dataset("gt", data=mask_refs)
    return path
