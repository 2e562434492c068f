"""A PyTorch reference of the release's LLM2TTSCodecAR (vita_tts/decoder/decoder.py) for the tests: transformers'
LlamaDecoderLayer / LlamaRMSNorm / LlamaRotaryEmbedding (eager attention) exactly as the release composes them, its
teacher-forced forward (mask: prefix bidirectional, tokens -> whole prefix + causal) and its greedy inference
(prefix without a mask, then one token at a time; recomputed in full here, which equals the release's cached loop)."""
import torch
import torch.nn as nn
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRMSNorm, LlamaRotaryEmbedding


class LLM2TTSCodecAR(nn.Module):
    def __init__(self, idim, odim, hidden, ffn, blocks, heads):
        super().__init__()
        self.vocab_size = odim
        config = LlamaConfig(vocab_size=odim + 4, hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=blocks,
                             num_attention_heads=heads, max_position_embeddings=2048, bos_token_id=odim + 1,
                             eos_token_id=odim + 2, pad_token_id=odim + 3, attention_dropout=0.0)
        config._attn_implementation = "eager"
        self.embedding = nn.Embedding(odim + 4, idim, padding_idx=odim + 3)
        self.layers_pre_nn = nn.ModuleList([LlamaDecoderLayer(config, i) for i in range(blocks // 2)])
        self.rotary_emb_pre_nn = LlamaRotaryEmbedding(config=config)
        self.layers = nn.ModuleList([LlamaDecoderLayer(config, i) for i in range(blocks)])
        self.norm = LlamaRMSNorm(hidden, eps=config.rms_norm_eps)
        self.rotary_emb = LlamaRotaryEmbedding(config=config)
        self.out_fnn = nn.Linear(hidden, odim + 4)

    @staticmethod
    def _run(layers, rotary, x, mask):
        pos = torch.arange(x.shape[1])[None]
        emb = rotary(x, pos)
        add = None if mask is None else (~mask[:, None]) * torch.finfo(x.dtype).min
        for layer in layers:
            x = layer(x, attention_mask=add, position_ids=pos, position_embeddings=emb)
        return x

    def pre_nn(self, h, lens):
        b, n, _ = h.shape
        mask = torch.zeros(b, n, n, dtype=torch.bool)
        for i in range(b):
            mask[i, :lens[i], :lens[i]] = True
        return self._run(self.layers_pre_nn, self.rotary_emb_pre_nn, h, mask)

    def forward_logits(self, h, h_lens, y, y_lens):
        """The release's forward up to the logits (batch of one row per call keeps its positions: no padding)."""
        b, max_len = y.shape
        h = self.pre_nn(h, h_lens)
        h = torch.cat([self.embedding(torch.full((b, 1), self.vocab_size)), h], 1)
        h_lens = h_lens + 1
        x = torch.cat([torch.full((b, 1), self.vocab_size + 1), y], 1)
        n = h.shape[1] + max_len + 1
        mask = torch.zeros(b, n, n, dtype=torch.bool)
        for i in range(b):
            mask[i, :h_lens[i], :h_lens[i]] = True
            mask[i, h.shape[1]:h.shape[1] + y_lens[i] + 1, :h_lens[i]] = True
            mask[i, h.shape[1]:h.shape[1] + y_lens[i] + 1, h.shape[1]:h.shape[1] + y_lens[i] + 1] = torch.tril(
                torch.ones(y_lens[i] + 1, y_lens[i] + 1, dtype=torch.bool))
        out = self._run(self.layers, self.rotary_emb, torch.cat([h, self.embedding(x)], 1), mask)
        return self.out_fnn(self.norm(out[:, h.shape[1]:]))

    def greedy(self, h, max_tokens):
        """The release's infer with top_k=1 (its multinomial over one candidate is the argmax), bos / sos / pad
        excluded as ours does (the release would pass them on to the codec, which has no such codes)."""
        h = self.pre_nn(h, [h.shape[1]])
        prefix = torch.cat([self.embedding(torch.full((1, 1), self.vocab_size)), h], 1)
        tokens = [self.vocab_size + 1]
        out = []
        for _ in range(max_tokens):
            seq = torch.cat([prefix, self.embedding(torch.tensor([tokens]))], 1)
            p = prefix.shape[1]
            mask = torch.zeros(1, seq.shape[1], seq.shape[1], dtype=torch.bool)
            mask[0, :p, :p] = True
            mask[0, p:, :p] = True
            mask[0, p:, p:] = torch.tril(torch.ones(len(tokens), len(tokens), dtype=torch.bool))
            logits = self.out_fnn(self.norm(self._run(self.layers, self.rotary_emb, seq, mask)[:, -1]))[0]
            logits[[self.vocab_size, self.vocab_size + 1, self.vocab_size + 3]] = -torch.inf
            nxt = int(logits.argmax())
            if nxt == self.vocab_size + 2:
                break
            out.append(nxt)
            tokens.append(nxt)
        return out
