"""MLM training throughput: our Transformer shaped like ESM-2 8M vs HF transformers' EsmForMaskedLM.

Both models get the same shape (6 layers, 320 wide, 20 heads, FFN 1280, rotary positions, no
dropout, our 30-token protein vocabulary), the same batch of random protein sequences of
``--length`` tokens (<cls> … <eos>, no padding, but each model is given its attention mask as in
training), the same BERT masking (15%, 80/10/10; ``selfsup.views.sequence.bert_mask``), the same
loss (cross-entropy on masked positions) and the same optimiser step (AdamW). Throughput is
tokens per second of whole training steps (forward, backward, optimiser), timed after warm-up
with the device synchronised.

Rows: ``selfsup mlm`` is our MLM method's own training step; ``selfsup, no mask`` the same
encoder told there is no padding (``padded=False``: SDPA may use its flash kernel); ``hf esm``
is EsmForMaskedLM with SDPA attention where the installed transformers offers it, else its
default. ``--compile`` adds torch.compile'd rows of ours.

    # issue 5's GPU number (H100, bf16)
    python bench/esm_throughput.py --compile
    # CPU smoke run of the script itself (seconds)
    python bench/esm_throughput.py --tiny

transformers is imported only for the HF row; when it is missing the script says so and still
times ours.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from selfsup.backbones.transformer import ESM2Options, TransformerEncoder  # noqa: E402
from selfsup.losses import masked_token_cross_entropy  # noqa: E402
from selfsup.methods.mlm import MaskedLanguageModel  # noqa: E402
from selfsup.tokenize import ProteinTokenizer  # noqa: E402
from selfsup.tokenize.alphabets import STANDARD_AMINO_ACIDS  # noqa: E402
from selfsup.views.sequence import bert_mask  # noqa: E402

TINY = dict(depth=2, dim=64, num_heads=4, ffn_dim=256, length=128, batch=4, steps=3, warmup=1)


def synthetic_batch(tokenizer: ProteinTokenizer, batch: int, length: int, device: torch.device,
                    seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(inputs, labels, attention mask): random standard amino acids framed by <cls> … <eos>,
    BERT-masked."""
    generator = torch.Generator(device=device).manual_seed(seed)
    letters = torch.tensor([tokenizer.index[a] for a in STANDARD_AMINO_ACIDS], device=device)
    ids = letters[torch.randint(len(letters), (batch, length), generator=generator, device=device)]
    ids[:, 0], ids[:, -1] = tokenizer.cls_id, tokenizer.eos_id
    masked = bert_mask(ids, tokenizer, generator)
    return masked.inputs, masked.labels, torch.ones_like(ids, dtype=torch.bool)


def time_steps(step: Callable[[], torch.Tensor], steps: int, warmup: int,
               device: torch.device) -> tuple[float, float]:
    """(seconds per step, last loss) over ``steps`` timed steps after ``warmup`` untimed ones."""
    for _ in range(warmup):
        step()
    _sync(device)
    started = time.perf_counter()
    for _ in range(steps):
        loss = step()
    _sync(device)
    return (time.perf_counter() - started) / steps, float(loss)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def training_step(model: torch.nn.Module, loss_fn: Callable[[], torch.Tensor], device: torch.device,
                  precision: str) -> Callable[[], torch.Tensor]:
    """One AdamW step of ``loss_fn`` under autocast (bf16) or in float32."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)

    def step() -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = loss_fn()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def our_loss(variant: str, method: MaskedLanguageModel, batch, compiled: bool) -> Callable[[], torch.Tensor]:
    """The loss of one of our variants on ``batch``, optionally through torch.compile."""
    inputs, labels, mask = batch
    if variant == "selfsup mlm":
        forward = torch.compile(method) if compiled else method
        return lambda: forward([inputs, labels]).loss

    def logits(tokens: torch.Tensor) -> torch.Tensor:
        return method.head(method.encoder.forward_tokens(tokens, mask, padded=False))

    forward_logits = torch.compile(logits) if compiled else logits
    return lambda: masked_token_cross_entropy(forward_logits(inputs), labels)


def our_rows(args, tokenizer, batch, device) -> list[dict]:
    rows = []
    for compiled in ([False, True] if args.compile else [False]):
        for variant in ("selfsup mlm", "selfsup, no mask"):
            torch.manual_seed(0)
            encoder = TransformerEncoder(ESM2Options(vocab_size=tokenizer.vocab_size, dim=args.dim,
                                                     depth=args.depth, num_heads=args.num_heads,
                                                     ffn_dim=args.ffn_dim))
            method = MaskedLanguageModel(encoder).to(device)
            loss_fn = our_loss(variant, method, batch, compiled)
            name = variant + (" (compiled)" if compiled else "")
            rows.append(_measure(name, method, loss_fn, args, device))
    return rows


def hf_row(args, tokenizer, batch, device) -> Optional[dict]:
    try:
        import transformers
        from transformers import EsmConfig, EsmForMaskedLM
    except ImportError:
        print("NOTE: HF transformers is not installed here, so the EsmForMaskedLM row is skipped "
              "(pip install transformers, or run on the GPU machine, which has it); ours is timed.")
        return None
    inputs, labels, mask = batch
    config = EsmConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=args.dim, num_hidden_layers=args.depth,
        num_attention_heads=args.num_heads, intermediate_size=args.ffn_dim,
        position_embedding_type="rotary", max_position_embeddings=max(1026, args.length + 2),
        pad_token_id=tokenizer.pad_id, mask_token_id=tokenizer.mask_id, token_dropout=False,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, emb_layer_norm_before=False,
    )
    torch.manual_seed(0)
    try:
        model = EsmForMaskedLM._from_config(config, attn_implementation="sdpa")
    except (ValueError, TypeError, ImportError):  # this transformers has no SDPA path for ESM
        model = EsmForMaskedLM(config)
    model = model.to(device)
    attention = getattr(model.config, "_attn_implementation", "eager")
    loss_fn = lambda: model(input_ids=inputs, attention_mask=mask, labels=labels).loss  # noqa: E731
    row = _measure(f"hf esm ({attention})", model, loss_fn, args, device)
    row["transformers"] = transformers.__version__
    return row


def _measure(name: str, model: torch.nn.Module, loss_fn, args, device) -> dict:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    step = training_step(model, loss_fn, device, args.precision)
    seconds, loss = time_steps(step, args.steps, args.warmup, device)
    tokens = args.batch * args.length
    row = {"name": name, "tokens_per_s": tokens / seconds, "step_ms": 1000 * seconds, "loss": loss,
           "parameters": sum(p.numel() for p in model.parameters())}
    if device.type == "cuda":
        row["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    print(f"  {name}: {row['tokens_per_s']:,.0f} tokens/s")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--dim", type=int, default=320)
    parser.add_argument("--num-heads", type=int, default=20)
    parser.add_argument("--ffn-dim", type=int, default=1280)
    parser.add_argument("--length", type=int, default=512, help="tokens per sequence, specials included")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30, help="timed steps")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=["bf16", "fp32"], default=None,
                        help="default: bf16 on CUDA, fp32 on the CPU")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd rows of ours")
    parser.add_argument("--no-hf", action="store_true", help="skip the HF row")
    parser.add_argument("--tiny", action="store_true", help=f"CPU smoke sizes: {TINY}")
    parser.add_argument("--out", default=None,
                        help="JSON path (default bench/results/esm_throughput-DEVICE.json)")
    args = parser.parse_args()
    if args.tiny:
        for key, value in TINY.items():
            setattr(args, key, value)
    device = torch.device(args.device)
    args.precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    tokenizer = ProteinTokenizer()
    batch = synthetic_batch(tokenizer, args.batch, args.length, device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu")
    print(f"MLM training steps, {args.depth} layers × {args.dim} wide, {args.num_heads} heads, FFN "
          f"{args.ffn_dim}, batch {args.batch} × {args.length} tokens, {args.precision}, {name}")
    rows = our_rows(args, tokenizer, batch, device)
    hf = None if args.no_hf else hf_row(args, tokenizer, batch, device)
    if hf is not None:
        rows.append(hf)
    print(f"\n{'model':<28} {'tokens/s':>12} {'step ms':>9} {'peak GiB':>9} {'vs HF':>7}")
    for row in rows:
        versus = f"{row['tokens_per_s'] / hf['tokens_per_s']:.2f}×" if hf else "—"
        peak = f"{row['peak_gib']:.2f}" if "peak_gib" in row else "—"
        print(f"{row['name']:<28} {row['tokens_per_s']:>12,.0f} {row['step_ms']:>9.1f} {peak:>9} {versus:>7}")
    slug = "cpu" if device.type == "cpu" else name.lower().replace(" ", "-")
    out = Path(args.out or f"bench/results/esm_throughput-{slug}{'-tiny' if args.tiny else ''}.json")
    result = {"device": name, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
              "args": vars(args), "hf_available": hf is not None, "rows": rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
