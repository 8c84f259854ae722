"""The settings of `edm2 toy` in one place (standard library only, so `edm2 toy --help` is fast)."""

import dataclasses


@dataclasses.dataclass
class ToySetup:
    """What `run_toy` trains and how it samples. The official example trains the main model
    (4 layers x 64 features) for 4096 iterations and both guides (32 features) for 512, all on
    4096 samples per iteration, and guides with w = 4 (CFG, unconditional guide) and w = 3
    (autoguidance, class-A guide). The defaults here keep the guides' 512 iterations and halve
    the main model's, on 512 samples per iteration, to fit a CPU; the less trained main model
    takes a lower autoguidance weight (2: w 3 threw samples off the tree in our runs)."""

    iters: int = 2048  # training iterations of the main model
    guide_iters: int = 512  # training iterations of the guides (shorter: the "bad version")
    batch: int = 512  # samples per training iteration
    dim: int = 64  # hidden features of the main model
    guide_dim: int = 32  # hidden features of the guides (smaller)
    cfg_guidance: float = 4.0
    auto_guidance: float = 2.0
    num_samples: int = 4096  # samples per panel of the first row
    seed: int = 0
