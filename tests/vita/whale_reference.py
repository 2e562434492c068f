"""A small PyTorch reference of VITA-1.5's speech encoder ("whale") and audio adapter, written for the parity tests
from the upstream code's semantics (vita/model/multimodal_encoder/whale at commit 35d064a of the VITA
repository; docs/vita.md) with the upstream module names, so its state_dict carries the release's keys:
encoder.global_cmvn.{mean,istd}, encoder.enc.0.core.{conv.0,conv.2,out.0}.*, encoder.enc.1.embed.{0,1}.*,
encoder.enc.1.encoders.{i}.{self_attn.*, feed_forward.w_{1,2}.*, norm{1,2}.*}, encoder.enc.1.after_norm.*,
adpter.{conv1d2,bn2,project}.*. Independent of vita_jax (torch only)."""
from __future__ import annotations

import math

import torch
from torch import nn


class GlobalCMVN(nn.Module):
    def __init__(self, mean, istd):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("istd", istd)

    def forward(self, x):
        return (x - self.mean) * self.istd


class Conv2dSubsampling4(nn.Module):
    def __init__(self, idim, odim):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(1, odim, 3, 2), nn.ReLU(), nn.Conv2d(odim, odim, 3, 2), nn.ReLU())
        self.out = nn.Sequential(nn.Linear(odim * (((idim - 1) // 2 - 1) // 2), odim))

    def forward(self, x, mask):
        x = self.conv(x.unsqueeze(1))  # [B, C, T', F']
        b, c, t, f = x.size()
        x = self.out(x.transpose(1, 2).contiguous().view(b, t, c * f))
        return x, mask[:, :, 2::2][:, :, 2::2]


class Subsampling(nn.Module):
    def __init__(self, idim, odim):
        super().__init__()
        self.core = Conv2dSubsampling4(idim, odim)


class MultiHeadedAttention(nn.Module):
    def __init__(self, n_head, n_feat):
        super().__init__()
        self.d_k, self.h = n_feat // n_head, n_head
        self.linear_q, self.linear_k = nn.Linear(n_feat, n_feat), nn.Linear(n_feat, n_feat)
        self.linear_v, self.linear_out = nn.Linear(n_feat, n_feat), nn.Linear(n_feat, n_feat)
        self.linear_pos = nn.Linear(n_feat, n_feat, bias=False)
        self.pos_bias_u = nn.Parameter(torch.empty(self.h, self.d_k))
        self.pos_bias_v = nn.Parameter(torch.empty(self.h, self.d_k))
        nn.init.xavier_uniform_(self.pos_bias_u)
        nn.init.xavier_uniform_(self.pos_bias_v)
        self.min_value = float(torch.finfo(torch.float16).min)

    def forward(self, x, mask, pos_emb):
        b = x.size(0)
        q = self.linear_q(x).view(b, -1, self.h, self.d_k)  # [B, T, H, d]
        k = self.linear_k(x).view(b, -1, self.h, self.d_k).transpose(1, 2)
        v = self.linear_v(x).view(b, -1, self.h, self.d_k).transpose(1, 2)
        p = self.linear_pos(pos_emb).view(pos_emb.size(0), -1, self.h, self.d_k).transpose(1, 2)
        ac = torch.matmul((q + self.pos_bias_u).transpose(1, 2), k.transpose(-2, -1))
        bd = torch.matmul((q + self.pos_bias_v).transpose(1, 2), p.transpose(-2, -1))  # no rel_shift
        scores = (ac + bd) / math.sqrt(self.d_k)
        masked = mask.unsqueeze(1).eq(0)
        attn = torch.softmax(scores.masked_fill(masked, self.min_value), dim=-1).masked_fill(masked, 0.0)
        out = torch.matmul(attn, v).transpose(1, 2).contiguous().view(b, -1, self.h * self.d_k)
        return self.linear_out(out)


class FeedForward(nn.Module):
    def __init__(self, idim, hidden):
        super().__init__()
        self.w_1, self.w_2 = nn.Linear(idim, hidden), nn.Linear(hidden, idim)

    def forward(self, x):
        return self.w_2(torch.relu(self.w_1(x)))


class TransformerLayer(nn.Module):
    def __init__(self, size, heads, ffn, eps):
        super().__init__()
        self.self_attn, self.feed_forward = MultiHeadedAttention(heads, size), FeedForward(size, ffn)
        self.norm1, self.norm2 = nn.LayerNorm(size, eps=eps), nn.LayerNorm(size, eps=eps)

    def forward(self, x, mask, pos_emb):
        x = x + self.self_attn(self.norm1(x), mask, pos_emb)
        return x + self.feed_forward(self.norm2(x))


def subsequent_chunk_mask(size, chunk, left):
    ret = torch.zeros(size, size, dtype=torch.bool)
    for i in range(size):
        start = 0 if left < 0 else max((i // chunk - left) * chunk, 0)
        ret[i, start:min((i // chunk + 1) * chunk, size)] = True
    return ret


class Transformer(nn.Module):
    def __init__(self, dim, heads, ffn, layers, eps, chunk_size=-1, left_chunks=-1, max_len=5000):
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(dim, dim), nn.LayerNorm(dim, eps=eps), nn.Dropout(0.0), nn.ReLU())
        self.encoders = nn.ModuleList([TransformerLayer(dim, heads, ffn, eps) for _ in range(layers)])
        self.after_norm = nn.LayerNorm(dim, eps=eps)
        self.chunk_size, self.left_chunks, self.dim = chunk_size, left_chunks, dim
        pe = torch.zeros(max_len, dim)
        position = torch.arange(0, max_len, dtype=torch.float32).unsqueeze(1)
        div_term = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * -(math.log(10000.0) / dim))
        pe[:, 0::2], pe[:, 1::2] = torch.sin(position * div_term), torch.cos(position * div_term)
        self.register_buffer("pe", pe.unsqueeze(0), persistent=False)

    def forward(self, x, masks):
        chunk_masks = masks  # [B, 1, T]
        if self.chunk_size > 0:
            chunk_masks = masks & subsequent_chunk_mask(x.size(1), self.chunk_size, self.left_chunks).unsqueeze(0)
        x = self.embed(x) * math.sqrt(self.dim)
        pos_emb = self.pe[:, :x.size(1)]
        for layer in self.encoders:
            x = layer(x, chunk_masks, pos_emb)
        return self.after_norm(x), masks


class WhaleEncoder(nn.Module):
    def __init__(self, idim, dim, heads, ffn, layers, eps=1e-5, chunk_size=-1, left_chunks=-1):
        super().__init__()
        self.global_cmvn = GlobalCMVN(torch.zeros(idim), torch.ones(idim))
        self.enc = nn.ModuleList([Subsampling(idim, dim), Transformer(dim, heads, ffn, layers, eps, chunk_size,
                                                                      left_chunks)])

    def forward(self, xs, lengths):
        masks = (torch.arange(xs.size(1))[None, :] < lengths[:, None]).unsqueeze(1)  # [B, 1, T]
        xs = self.global_cmvn(xs)
        xs, masks = self.enc[0].core(xs, masks)
        return self.enc[1](xs, masks)


class CNNSubsampling(nn.Module):
    def __init__(self, enc_dim, llm_dim, kernel_size=5, activation_func="gelu"):
        super().__init__()
        self.left_padding2 = nn.ConstantPad1d((0, kernel_size - 1), 0.0)
        self.conv1d2 = nn.Conv1d(enc_dim, 2 * enc_dim, kernel_size, 2, 0)
        self.bn2 = nn.LayerNorm(2 * enc_dim, eps=1e-3)
        self.relu2 = nn.GELU() if activation_func == "gelu" else nn.ReLU()  # as upstream: anything else is ReLU
        self.project = nn.Linear(2 * enc_dim, llm_dim)

    def forward(self, x, mask_pad):
        x = x.transpose(1, 2).masked_fill(~mask_pad, 0.0)
        x = self.conv1d2(self.left_padding2(x))
        x = self.relu2(self.bn2(x.transpose(1, 2)))
        return self.project(x), mask_pad[:, :, 0::2]


class AudioEncoder(nn.Module):
    """encoder + adpter, as `audioEncoder.forward`: -> (inputs_embeds [B, N, E], attention_mask [B, N])."""

    def __init__(self, idim=80, dim=64, heads=4, ffn=128, layers=2, llm_dim=48, eps=1e-5, chunk_size=-1,
                 left_chunks=-1, activation_func="gelu"):
        super().__init__()
        self.encoder = WhaleEncoder(idim, dim, heads, ffn, layers, eps, chunk_size, left_chunks)
        self.adpter = CNNSubsampling(dim, llm_dim, activation_func=activation_func)

    def forward(self, speech, lengths):
        out, mask = self.encoder(speech, lengths)
        embeds, mask = self.adpter(out, mask)
        return embeds, mask.squeeze(1)


def randomize(module: nn.Module, seed: int = 0, scale: float = 0.2) -> nn.Module:
    """Every parameter (and the CMVN buffers) random, so no term of the computation hides behind an init value."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith(("norm1.weight", "norm2.weight", "after_norm.weight", "embed.1.weight", "bn2.weight")):
                p.copy_(1.0 + scale * torch.randn(p.shape, generator=g))
            else:
                p.copy_(scale * torch.randn(p.shape, generator=g) / max(1.0, math.sqrt(p[0].numel() / 16)))
        cmvn = module.encoder.global_cmvn
        cmvn.mean.copy_(10.0 + torch.randn(cmvn.mean.shape, generator=g))
        cmvn.istd.copy_(0.3 + 0.05 * torch.rand(cmvn.istd.shape, generator=g))
    return module.eval()
