"""Build pickles in the format of the official EDM2 release, for tests.

The official files are written with plain `pickle.dump` of objects whose classes are wrapped
by `torch_utils.persistence.persistent_class`: such objects pickle as a call to
`torch_utils.persistence._reconstruct_persistent_obj(meta)` with
`meta = {type, version, module_src, class_name, state}`, and loading them the ordinary way
executes `module_src`. This helper writes a small stand-in of that machinery (packages
`torch_utils`, `dnnlib`, `training`) into a folder and runs a *separate* Python process with
that folder on its path to produce the pickles, so the test process never imports them.

Usage (from any test): `make_official_pickles(workdir, [spec, ...])` where a spec is a dict
with keys `path`, `network_kwargs`, `seed`, `encoder` ('rgb' or 'vae'), optional `scale`
(weight perturbation), `fill` (every parameter this constant instead of random), `protocol`.
Next to each pickle, `<path>.ref.safetensors` holds the same weights (fp16) written by
safetensors for comparison.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from tiny_networks import tiny_network

PERSISTENCE_SRC = '''
"""Stand-in for NVIDIA's torch_utils.persistence, written for the tests."""
import copy
import inspect
import sys
import types

_version = 6


def persistent_class(orig_class):
    module_src = inspect.getsource(sys.modules[orig_class.__module__])

    class Decorator(orig_class):
        _orig_module_src = module_src
        _orig_class_name = orig_class.__name__

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._init_args = copy.deepcopy(args)
            self._init_kwargs = copy.deepcopy(kwargs)

        def __reduce__(self):
            fields = list(super().__reduce__())
            fields += [None] * max(3 - len(fields), 0)
            if fields[0] is not _reconstruct_persistent_obj:
                meta = dict(type="class", version=_version, module_src=self._orig_module_src,
                            class_name=self._orig_class_name, state=fields[2])
                fields[0] = _reconstruct_persistent_obj
                fields[1] = (meta,)
                fields[2] = None
            return tuple(fields)

    Decorator.__name__ = orig_class.__name__
    Decorator.__qualname__ = orig_class.__qualname__
    Decorator.__module__ = orig_class.__module__
    return Decorator


def _reconstruct_persistent_obj(meta):
    # The naive loader: executes the stored module source, as the official one does.
    module = types.ModuleType("_persistent_module")
    exec(meta["module_src"], module.__dict__)
    cls = persistent_class(module.__dict__[meta["class_name"]])
    obj = cls.__new__(cls)
    obj.__dict__.update(meta["state"])
    return obj
'''

DNNLIB_SRC = """
class EasyDict(dict):
    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name)

    def __setattr__(self, name, value):
        self[name] = value
"""

NETWORKS_SRC = '''
"""Network classes named like training/networks_edm2.py (built on edm2.nn for the tests)."""
import edm2.nn
from torch_utils import persistence


@persistence.persistent_class
class MPFourier(edm2.nn.MPFourier):
    pass


@persistence.persistent_class
class MPConv(edm2.nn.MPConv):
    pass


@persistence.persistent_class
class Block(edm2.nn.Block):
    pass


@persistence.persistent_class
class UNet(edm2.nn.UNet):
    pass


@persistence.persistent_class
class Precond(edm2.nn.Precond):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        del self.init_kwargs, self.amp_dtype  # attributes the official Precond does not have
        swap = {edm2.nn.MPFourier: MPFourier, edm2.nn.MPConv: MPConv, edm2.nn.Block: Block, edm2.nn.UNet: UNet}
        for module in self.modules():
            if type(module) in swap:
                module.__class__ = swap[type(module)]
'''

ENCODERS_SRC = """
import numpy as np
from torch_utils import persistence


@persistence.persistent_class
class Encoder:
    def __init__(self):
        pass


@persistence.persistent_class
class StandardRGBEncoder(Encoder):
    def __init__(self):
        super().__init__()


@persistence.persistent_class
class StabilityVAEEncoder(Encoder):
    def __init__(self, vae_name="stabilityai/sd-vae-ft-mse", raw_mean=[5.81, 3.25, 0.12, -2.15],
                 raw_std=[4.17, 4.62, 3.71, 3.28], final_mean=0, final_std=0.5, batch_size=8):
        super().__init__()
        self.vae_name = vae_name
        self.scale = np.float32(final_std) / np.float32(raw_std)
        self.bias = np.float32(final_mean) - np.float32(raw_mean) * self.scale
        self.batch_size = int(batch_size)
        self._vae = None

    def __getstate__(self):
        return dict(self.__dict__, _vae=None)
"""

LOSS_SRC = """
from torch_utils import persistence


@persistence.persistent_class
class EDM2Loss:
    def __init__(self, P_mean=-0.4, P_std=1.0, sigma_data=0.5):
        self.P_mean = P_mean
        self.P_std = P_std
        self.sigma_data = sigma_data
"""

MAKER_SRC = """
import json, pickle, sys
import torch
from safetensors.torch import save_file
import dnnlib
from training import encoders, networks_edm2, training_loop

for spec in json.loads(sys.argv[1]):
    torch.manual_seed(spec.get("seed", 0))
    net = networks_edm2.Precond(**spec["network_kwargs"])
    with torch.no_grad():
        for p in net.parameters():  # non-trivial weights (gains included), as after training
            p.copy_(torch.randn_like(p) * spec.get("scale", 1.0) if "fill" not in spec else spec["fill"])
    net = net.eval().requires_grad_(False).to(torch.float16)
    if spec.get("probe"):  # reference outputs of the pickled network (fp16 weights, fp32 compute)
        net.to(torch.float32)
        g = torch.Generator().manual_seed(1)
        kw = spec["network_kwargs"]
        x = torch.randn(2, kw["img_channels"], kw["img_resolution"], kw["img_resolution"], generator=g)
        sigma = torch.tensor([0.3, 2.0])
        labels = torch.eye(kw["label_dim"])[:2] if kw["label_dim"] else None
        out, logvar = net(x, sigma, labels, return_logvar=True)
        save_file({"x": x, "sigma": sigma, "out": out, "logvar": logvar}, spec["path"] + ".out.safetensors")
        net.to(torch.float16)
    if spec.get("encoder", "rgb") == "rgb":
        encoder = encoders.StandardRGBEncoder()
    else:
        encoder = encoders.StabilityVAEEncoder(**spec.get("encoder_kwargs", {}))
    data = dnnlib.EasyDict(encoder=encoder, loss_fn=training_loop.EDM2Loss(P_mean=-0.8, P_std=1.6),
                           dataset_kwargs=dnnlib.EasyDict(class_name="training.dataset.ImageFolderDataset",
                                                          path="datasets/demo.zip", use_labels=True))
    data.ema = net
    with open(spec["path"], "wb") as f:
        pickle.dump(data, f, protocol=spec.get("protocol", 4))
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, spec["path"] + ".ref.safetensors")
"""


def write_official_packages(root) -> Path:
    """Write the stand-in packages (torch_utils, dnnlib, training) under `root/pkgs`."""
    pkgs = Path(root) / "pkgs"
    files = {
        "torch_utils/__init__.py": "",
        "torch_utils/persistence.py": PERSISTENCE_SRC,
        "dnnlib/__init__.py": "from dnnlib.util import EasyDict\n",
        "dnnlib/util.py": DNNLIB_SRC,
        "training/__init__.py": "",
        "training/networks_edm2.py": NETWORKS_SRC,
        "training/encoders.py": ENCODERS_SRC,
        "training/training_loop.py": LOSS_SRC,
        "make_pickles.py": MAKER_SRC,
    }
    for name, text in files.items():
        path = pkgs / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return pkgs


def run_with_packages(root, code_or_script, *args, check=True):
    """Run Python with the stand-in packages importable (a separate process)."""
    pkgs = write_official_packages(root)
    env = dict(os.environ, PYTHONPATH=str(pkgs), OMP_NUM_THREADS="1")
    cmd = [sys.executable]
    cmd += [str(pkgs / code_or_script)] if code_or_script.endswith(".py") else ["-c", code_or_script]
    result = subprocess.run(cmd + list(args), env=env, capture_output=True, text=True, cwd=root)
    if check and result.returncode != 0:
        raise RuntimeError(f"helper process failed:\n{result.stderr}")
    return result


def make_official_pickles(root, specs) -> list[Path]:
    """Write official-format network pickles described by `specs` (see the module docstring)."""
    run_with_packages(root, "make_pickles.py", json.dumps([dict(s, path=str(s["path"])) for s in specs]))
    return [Path(s["path"]) for s in specs]


TINY_NETWORK = tiny_network(channels_per_head=8)
