"""A small PyTorch reference of VITA-1.5's codec (the release's vita_tts/decoder/ticodec: Generator, Encoder,
Quantizer), written for the tests from the upstream semantics, with the release's module names so its state dicts
have the release's tensor names (weight norm as `weight_g` / `weight_v`, as in final.pt)."""
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import weight_norm

SLOPE = 0.1


def pad(k, d=1):
    return (k * d - d) // 2


class ResBlock1(nn.Module):
    def __init__(self, ch, k, dilations):
        super().__init__()
        self.convs1 = nn.ModuleList([weight_norm(nn.Conv1d(ch, ch, k, 1, dilation=d, padding=pad(k, d)))
                                     for d in dilations])
        self.convs2 = nn.ModuleList([weight_norm(nn.Conv1d(ch, ch, k, 1, padding=pad(k))) for _ in dilations])

    def forward(self, x):
        for c1, c2 in zip(self.convs1, self.convs2):
            x = x + c2(F.leaky_relu(c1(F.leaky_relu(x, SLOPE)), SLOPE))
        return x


class Generator(nn.Module):
    def __init__(self, h):
        super().__init__()
        self.h = h
        c0 = h["upsample_initial_channel"]
        self.conv_pre = weight_norm(nn.Conv1d(h["code_dim"], c0, 7, 1, padding=3))
        self.ups = nn.ModuleList([weight_norm(nn.ConvTranspose1d(c0 // 2**i, c0 // 2**(i + 1), k, u,
                                                                 padding=(k - u) // 2))
                                  for i, (u, k) in enumerate(zip(h["upsample_rates"], h["upsample_kernel_sizes"]))])
        self.resblocks = nn.ModuleList()
        for i in range(len(self.ups)):
            for k, d in zip(h["resblock_kernel_sizes"], h["resblock_dilation_sizes"]):
                self.resblocks.append(ResBlock1(c0 // 2**(i + 1), k, d))
        self.conv_post = weight_norm(nn.Conv1d(c0 // 2**len(self.ups), 1, 7, 1, padding=3))

    def forward(self, x, g):  # x [B, C, T], g [B, G]
        nk = len(self.h["resblock_kernel_sizes"])
        x = self.conv_pre(x)
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, SLOPE))
            x = sum(self.resblocks[i * nk + j](x) for j in range(nk)) / nk
            if x.shape[-2] == g.shape[-1]:
                x = x + g.unsqueeze(-1)
        return torch.tanh(self.conv_post(F.leaky_relu(x, SLOPE)))


class GlobalTokenEncoder(nn.Module):
    def __init__(self, cin, hid, out, k, s):
        super().__init__()
        p = (k - s) // 2
        self.conv = nn.Sequential(nn.Conv1d(cin, hid, k, s, p, bias=False), nn.LeakyReLU(SLOPE),
                                  nn.Conv1d(hid, hid, k, s, p, bias=False), nn.LeakyReLU(SLOPE),
                                  nn.Conv1d(hid, out, k, s, p, bias=False), nn.LeakyReLU(SLOPE))
        self.fn = nn.Sequential(nn.Linear(out, out), nn.LeakyReLU(SLOPE), nn.BatchNorm1d(out))

    def forward(self, x):
        return self.fn(self.conv(x).mean(dim=2))


class Encoder(nn.Module):
    def __init__(self, h):
        super().__init__()
        self.h = h
        c = h["encoder_channels"]
        self.conv_pre = weight_norm(nn.Conv1d(1, c, 7, 1, padding=3))
        pairs = list(reversed(list(zip(h["upsample_rates"], h["upsample_kernel_sizes"]))))
        self.ups = nn.ModuleList([weight_norm(nn.Conv1d(c * 2**i, c * 2**(i + 1), k, u, padding=(k - u) // 2))
                                  for i, (u, k) in enumerate(pairs)])
        self.resblocks, self.normalize = nn.ModuleList(), nn.ModuleList()
        for i in range(len(self.ups)):
            ch = c * 2**(i + 1)
            for k, d in zip(reversed(h["resblock_kernel_sizes"]), reversed(h["resblock_dilation_sizes"])):
                self.resblocks.append(ResBlock1(ch, k, d))
                self.normalize.append(nn.GroupNorm(max(ch // 16, 1), ch, eps=1e-6, affine=True))
        self.conv_post = nn.Conv1d(h["code_dim"], h["code_dim"], 3, 1, padding=1)
        self.linear = nn.Sequential(nn.Linear(h["global_feature_conv"][2], h["global_feature_conv"][2]),
                                    nn.LeakyReLU(SLOPE))  # built, never called (as in the release)
        self.GlobalTokenEncoder = GlobalTokenEncoder(*h["global_feature_conv"])

    def forward(self, x):
        nk, n = len(self.h["resblock_kernel_sizes"]), len(self.ups)
        x = self.conv_pre(x)
        g = None
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, SLOPE))
            xs = None
            for j in range(nk):
                r = self.resblocks[i * nk + j](x)
                xs = self.normalize[i * nk + j](r if xs is None else xs + r)
            x = xs / nk
            if i == n // 2 - 1:
                g = self.GlobalTokenEncoder(x)
        return self.conv_post(F.leaky_relu(x)), g


class QuantizerModule(nn.Module):
    def __init__(self, n, d):
        super().__init__()
        self.embedding = nn.Embedding(n, d)

    def forward(self, x):
        d = (x**2).sum(1, keepdim=True) + (self.embedding.weight**2).sum(1) - 2 * x @ self.embedding.weight.T
        return d.argmin(1)


class Quantizer(nn.Module):
    def __init__(self, h):
        super().__init__()
        self.quantizer_modules = nn.ModuleList([QuantizerModule(h["n_codes"], h["code_dim"])])
        gd = h["global_feature_conv"][2]
        self.quantizer_modules_globaltokens = nn.ModuleList(
            [QuantizerModule(h["n_codes"], gd // h["global_code_num"]) for _ in range(h["global_code_num"])])

    def embed(self, codes):  # [B, T] -> [B, C, T]
        return self.quantizer_modules[0].embedding(codes).transpose(1, 2)

    def embed_gst(self, tokens):  # [B, G] -> [B, gd]
        return torch.cat([m.embedding(tokens[:, i]) for i, m in enumerate(self.quantizer_modules_globaltokens)], -1)

    def encode(self, latent, g):  # latent [B, C, T], g [B, gd]
        b = latent.shape[0]
        codes = self.quantizer_modules[0](latent.transpose(1, 2).reshape(-1, latent.shape[1])).reshape(b, -1)
        pieces = g.reshape(b, len(self.quantizer_modules_globaltokens), -1)
        tokens = torch.stack([m(pieces[:, i]) for i, m in enumerate(self.quantizer_modules_globaltokens)], -1)
        return codes, tokens


def randomize(module: nn.Module, seed: int, scale: float = 0.3) -> None:
    """Random weights (and BatchNorm running statistics) of a non-trivial size."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("weight_g"):
                p.copy_(0.5 + torch.rand(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * scale)
        for m in module.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
