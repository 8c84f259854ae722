"""`edm2 dataset encode`: a pixel dataset -> Stable Diffusion VAE posteriors (docs/method.md#datasets).

Each source image (converted to RGB) becomes an 8-channel float32 array, posterior mean then std
at 1/8 resolution, stored as `s[:5]/img-mean-std-{s}.npy` with `s = f"{idx:08d}"`; labels are
carried over as in `convert`.
"""

import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from edm2.data.convert import decode_rgb, open_source
from edm2.data.encoders import StabilityVAEEncoder
from edm2.data.writer import check_dest, open_dest
from edm2.errors import ConfigError, DataError
from edm2.naming import out_name


@dataclasses.dataclass
class EncodeReport:
    dest: Path
    num_written: int
    latent_shape: tuple  # (8, H/8, W/8)
    labelled: bool
    notes: list

    def summary(self) -> str:
        lines = [
            f"wrote {self.num_written} latents of shape {list(self.latent_shape)} "
            f"({'labelled' if self.labelled else 'no labels'}) to {self.dest}"
        ]
        return "\n".join(lines + [f"note: {n}" for n in self.notes])


def resolve_device(device: str) -> torch.device:
    """'auto' -> cuda if available else cpu."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not str(device).startswith("cuda:"):
        raise ConfigError(f"device {device!r} is not auto, cpu or cuda")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
    return torch.device(device)


def encode_dataset(
    source,  # Pixel dataset (ZIP or folder), normally the output of `convert`.
    dest,  # Output .zip file or folder (absent or empty).
    vae: str = "stabilityai/sd-vae-ft-mse",  # Hub id or local AutoencoderKL folder.
    batch: int = 8,  # Images per VAE call (the reference uses 1; results agree up to float rounding).
    device: str = "auto",  # auto, cpu or cuda.
    max_images: int | None = None,  # Encode only the first N images.
    progress: bool = True,
) -> EncodeReport:
    """Encode a pixel dataset into Stable Diffusion VAE latents (`dataset_tool.py encode`;
    docs/method.md#encoders): per image an 8-channel float32 `.npy` [8, H/8, W/8] holding the
    posterior mean and std, plus the labels. Raises ConfigError/DataError before any compute for
    bad options or input. Returns an EncodeReport.
    """
    if int(batch) < 1:
        raise ConfigError(f"--batch must be at least 1, got {batch}")
    src = open_source(source, max_images=max_images, strict=False)
    check_dest(dest, src.path)
    dev = resolve_device(device)
    encoder = StabilityVAEEncoder(vae_name=vae, batch_size=int(batch))
    encoder.init(dev)  # load the VAE before anything is written

    reader = src.open_reader()
    labels, shape = [], None
    try:
        with open_dest(dest, src.path) as writer:
            bar = tqdm(total=len(src.names), unit="img", disable=not progress, dynamic_ncols=True)
            for start in range(0, len(src.names), int(batch)):
                names = src.names[start : start + int(batch)]
                images = [decode_rgb(reader.read(n), n) for n in names]
                for name, img in zip(names, images):
                    if img.shape != images[0].shape:
                        raise DataError(
                            f"{name} is {img.shape[1]}x{img.shape[0]}, unlike the images before it; "
                            "convert the source to one resolution first"
                        )
                    if img.shape[0] % 8 or img.shape[1] % 8:
                        raise DataError(f"{name} is {img.shape[1]}x{img.shape[0]}; the VAE needs sides divisible by 8")
                x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).to(dev)
                mean_std = encoder.encode_pixels(x).cpu().numpy()  # docs/method.md#datasets: [N, 8, H/8, W/8] float32
                for i, (name, arr) in enumerate(zip(names, mean_std)):
                    if shape is None:
                        shape = arr.shape
                    elif arr.shape != shape:
                        raise DataError(
                            f"{name} gives latents {list(arr.shape)}, earlier images {list(shape)}; "
                            "convert the source to one resolution first"
                        )
                    buf = io.BytesIO()
                    np.save(buf, arr.astype(np.float32))
                    fname = out_name(start + i, "img-mean-std-{}.npy")
                    writer.write(fname, buf.getvalue())
                    label = src.labels.get(name)
                    labels.append([fname, label] if label is not None else None)
                bar.update(len(names))
            bar.close()
            labelled = all(x is not None for x in labels)
            writer.write("dataset.json", json.dumps({"labels": labels if labelled else None}).encode())
    finally:
        reader.close()
    return EncodeReport(Path(dest), len(labels), tuple(shape), labelled, src.notes)
