"""A tiny NAFNet for the engine tests (tests/test_engines.py, tests/test_engine_openvino.py)."""

from __future__ import annotations

import torch

from imagingflows.models import nafnet

NAFNET = {"img_channel": 3, "width": 8, "middle_blk_num": 1, "enc_blk_nums": [1], "dec_blk_nums": [1],
          "local_train_size": None}


def tiny_nafnet() -> torch.nn.Module:
    """A seeded NAFNet of width 8 in eval mode; takes (N, 3, H, W) and returns the same shape."""
    torch.manual_seed(0)
    net = nafnet.build(**NAFNET).eval()
    for block in net.modules():  # zero beta / gamma make every block the identity: redraw them
        if isinstance(block, nafnet.NAFBlock):
            torch.nn.init.normal_(block.beta, 0, 0.1)
            torch.nn.init.normal_(block.gamma, 0, 0.1)
    return net
